//! The search strategies that need no tensors. One file each.

pub mod asha;
pub mod evolution;
pub mod fixed;
pub mod hyperband;
pub mod random;
pub mod successive_halving;

#[cfg(test)]
pub(crate) mod testing {
    use crate::space::Architecture;
    use crate::strategy::{Job, Outcome, Strategy};

    /// What a sequential run of a job strategy did.
    #[derive(Debug, Clone, Default)]
    pub struct Log {
        /// `(trial, budget, resumed)` of each job, in order.
        pub jobs: Vec<(u64, u64, bool)>,
        /// Trials pruned, in order.
        pub pruned: Vec<u64>,
        /// The architecture of each trial, by trial number (a `Resume` job
        /// names only the trial, as in the study runner, which reads it back
        /// from the store).
        pub archs: Vec<Architecture>,
    }

    /// Runs `jobs` jobs one at a time (each told before the next ask), the
    /// value of an architecture being `f(arch)` at every budget.
    pub fn run_sequential(s: &mut dyn Strategy, jobs: usize, f: &dyn Fn(&Architecture) -> f64) -> Log {
        let mut log = Log::default();
        continue_sequential(s, &mut log, jobs, f);
        log
    }

    /// Runs `jobs` more jobs as [`run_sequential`] does, appending to `log`
    /// (whose trials the strategy may resume).
    pub fn continue_sequential(s: &mut dyn Strategy, log: &mut Log, jobs: usize, f: &dyn Fn(&Architecture) -> f64) {
        for _ in 0..jobs {
            let next = log.archs.len() as u64;
            let (trial, budget, resumed) = match s.ask_job(next).unwrap() {
                Job::Start { arch, budget } => {
                    log.archs.push(arch);
                    (next, budget.unwrap(), false)
                }
                Job::Resume { trial, budget } => (trial, budget, true),
                Job::Wait => panic!("a sequential run never waits"),
            };
            let arch = log.archs.get(trial as usize).unwrap_or_else(|| panic!("resumed trial {trial} was never started")).clone();
            log.jobs.push((trial, budget, resumed));
            let pruned = s.tell_job(trial, &arch, Some(budget), Outcome::Complete { value: f(&arch) }).unwrap();
            log.pruned.extend(pruned);
        }
    }

    /// A deterministic score of an architecture.
    pub fn score(a: &Architecture) -> f64 {
        a.choices.iter().enumerate().map(|(i, &c)| ((c * 7 + i * 3) % 5) as f64).sum()
    }
}
