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
    #[derive(Debug, Default)]
    pub struct Log {
        /// `(trial, budget, resumed)` of each job, in order.
        pub jobs: Vec<(u64, u64, bool)>,
        /// Trials pruned, in order.
        pub pruned: Vec<u64>,
        pub archs: Vec<Architecture>,
    }

    /// Runs `jobs` jobs one at a time (each told before the next ask), the
    /// value of an architecture being `f(arch)` at every budget.
    pub fn run_sequential(s: &mut dyn Strategy, jobs: usize, f: &dyn Fn(&Architecture) -> f64) -> Log {
        let mut log = Log::default();
        for _ in 0..jobs {
            let next = log.archs.len() as u64;
            let (trial, arch, budget, resumed) = match s.ask_job(next).unwrap() {
                Job::Start { arch, budget } => {
                    log.archs.push(arch.clone());
                    (next, arch, budget.unwrap(), false)
                }
                Job::Resume { trial, arch, budget } => (trial, arch, budget, true),
                Job::Wait => panic!("a sequential run never waits"),
            };
            log.jobs.push((trial, budget, resumed));
            let pruned = s.tell_job(trial, &arch, Some(budget), Outcome::Complete { value: f(&arch) }).unwrap();
            log.pruned.extend(pruned);
        }
        log
    }

    /// A deterministic score of an architecture.
    pub fn score(a: &Architecture) -> f64 {
        a.choices.iter().enumerate().map(|(i, &c)| ((c * 7 + i * 3) % 5) as f64).sum()
    }
}
