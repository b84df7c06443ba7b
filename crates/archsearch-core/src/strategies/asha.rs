//! Asynchronous successive halving (ASHA).
//!
//! Li, Jamieson, Rostamizadeh, Gonina, Ben-tzur, Hardt, Recht & Talwalkar,
//! "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020,
//! Algorithm 2. Successive halving without its synchronisation barrier:
//! whenever a worker is free, ASHA looks at the rungs from the top down and
//! resumes the best not-yet-promoted trial that is in the top `⌊|rung|/η⌋` of
//! its rung; if there is none, it starts a new uniformly sampled
//! architecture at the bottom rung. No worker ever waits.
//!
//! Rung `k` has budget `r·η^(s+k)` (`s` the minimum early-stopping rate,
//! default 0) up to `R = max_budget`. A trial is never pruned while the study
//! runs (a later, larger rung may still promote it); when the study's budget
//! is spent, trials still paused below `R` are recorded as PRUNED at the step
//! of their rung.

use std::collections::BTreeSet;

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::successive_halving::{default_eta, ladder};
use crate::space::{Architecture, Space};
use crate::strategy::{from_state, to_state, Job, Outcome, Rng, Strategy, StrategyError};

/// Settings of ASHA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Smallest budget `r` (steps, e.g. epochs).
    pub min_budget: u64,
    /// Largest budget `R`: a trial evaluated to it is complete.
    pub max_budget: u64,
    /// Reduction factor η (paper: 3 or 4; default 3).
    #[serde(default = "default_eta")]
    pub eta: f64,
    /// Minimum early-stopping rate `s`: the bottom rung is `r·η^s` (paper: 0).
    #[serde(default)]
    pub early_stopping_rate: usize,
}

/// One told trial of a rung.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    trial: u64,
    arch: Architecture,
    /// `None`: failed.
    value: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct State {
    rng: Rng,
    /// Told trials of each rung.
    rungs: Vec<Vec<Entry>>,
    /// Trials already promoted out of each rung.
    promoted: Vec<BTreeSet<u64>>,
}

pub struct Asha {
    space: Space,
    eta: f64,
    budgets: Vec<u64>,
    state: State,
}

impl Asha {
    pub fn new(space: Space, config: Config, seed: u64) -> Result<Self, StrategyError> {
        let full = ladder(config.min_budget, config.max_budget, config.eta)?;
        if config.early_stopping_rate >= full.len() {
            return Err(StrategyError::Config(format!(
                "early_stopping_rate = {} leaves no rung (the ladder {full:?} has {})",
                config.early_stopping_rate,
                full.len()
            )));
        }
        let budgets = full[config.early_stopping_rate..].to_vec();
        let n = budgets.len();
        let state = State { rng: Rng::seed_from_u64(seed), rungs: vec![Vec::new(); n], promoted: vec![BTreeSet::new(); n] };
        Ok(Asha { space, eta: config.eta, budgets, state })
    }

    /// The rung budgets.
    pub fn budgets(&self) -> &[u64] {
        &self.budgets
    }

    /// The best not-yet-promoted trial in the top `⌊|rung|/η⌋` of rung `k`.
    fn promotable(&self, k: usize) -> Option<&Entry> {
        let rung = &self.state.rungs[k];
        let top = (rung.len() as f64 / self.eta + 1e-9).floor() as usize;
        let mut ranked: Vec<&Entry> = rung.iter().collect();
        // Best first (failed last); ties go to the earlier trial.
        ranked.sort_by(|a, b| {
            let (va, vb) = (a.value.unwrap_or(f64::NEG_INFINITY), b.value.unwrap_or(f64::NEG_INFINITY));
            vb.total_cmp(&va).then(a.trial.cmp(&b.trial))
        });
        ranked.into_iter().take(top).find(|e| e.value.is_some() && !self.state.promoted[k].contains(&e.trial))
    }
}

impl Strategy for Asha {
    fn name(&self) -> &str {
        "asha"
    }
    fn ask_job(&mut self, _next_trial: u64) -> Result<Job, StrategyError> {
        for k in (0..self.budgets.len() - 1).rev() {
            if let Some(e) = self.promotable(k) {
                let (trial, arch) = (e.trial, e.arch.clone());
                self.state.promoted[k].insert(trial);
                return Ok(Job::Resume { trial, arch, budget: self.budgets[k + 1] });
            }
        }
        let arch = self.space.sample(&mut self.state.rng);
        Ok(Job::Start { arch, budget: Some(self.budgets[0]) })
    }
    fn tell_job(&mut self, trial: u64, arch: &Architecture, budget: Option<u64>, outcome: Outcome) -> Result<Vec<u64>, StrategyError> {
        let k = budget
            .and_then(|b| self.budgets.iter().position(|&r| r == b))
            .ok_or_else(|| StrategyError::State(format!("trial {trial} was told at budget {budget:?}, not a rung of {:?}", self.budgets)))?;
        let value = match outcome {
            Outcome::Complete { value } => Some(value),
            Outcome::Pruned { .. } | Outcome::Failed => None,
        };
        self.state.rungs[k].push(Entry { trial, arch: arch.clone(), value });
        Ok(Vec::new())
    }
    fn max_budget(&self) -> Option<u64> {
        self.budgets.last().copied()
    }
    fn save_state(&self) -> Result<Vec<u8>, StrategyError> {
        to_state(&self.state)
    }
    fn load_state(&mut self, state: &[u8]) -> Result<(), StrategyError> {
        self.state = from_state(state)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::testing::{run_sequential, score};

    #[test]
    fn promotes_as_soon_as_a_trial_is_in_the_top_third() {
        let mut asha = Asha::new(Space::sequence(8, 5), Config { min_budget: 1, max_budget: 9, eta: 3.0, early_stopping_rate: 0 }, 2).unwrap();
        let log = run_sequential(&mut asha, 60, &score);
        // Three bottom-rung trials come first; the fourth job is a promotion
        // of the best of them.
        assert!(log.jobs[..3].iter().all(|j| j.1 == 1 && !j.2));
        let best = (0..3u64).max_by(|a, b| score(&log.archs[*a as usize]).total_cmp(&score(&log.archs[*b as usize])).then(b.cmp(a))).unwrap();
        assert_eq!(log.jobs[3], (best, 3, true));
        // Every promotion was of a trial then in the top ⌊|rung|/η⌋ of its rung.
        let budgets = [1u64, 3, 9];
        let mut rungs: Vec<Vec<u64>> = vec![Vec::new(); 3];
        for &(trial, budget, resumed) in &log.jobs {
            let k = budgets.iter().position(|&b| b == budget).unwrap();
            if resumed {
                let mut below = rungs[k - 1].clone();
                below.sort_by(|a, b| score(&log.archs[*b as usize]).total_cmp(&score(&log.archs[*a as usize])).then(a.cmp(b)));
                assert!(below[..below.len() / 3].contains(&trial), "trial {trial} promoted to {budget} from outside the top third");
            }
            rungs[k].push(trial);
        }
        assert!(rungs[0].len() > rungs[1].len() && rungs[1].len() > rungs[2].len() && !rungs[2].is_empty());
        assert!(log.pruned.is_empty());
        // No trial is promoted twice out of a rung.
        let mut seen = std::collections::BTreeSet::new();
        assert!(log.jobs.iter().filter(|j| j.2).all(|j| seen.insert((j.0, j.1))));
    }

    #[test]
    fn early_stopping_rate_raises_the_bottom_rung() {
        let a = Asha::new(Space::sequence(3, 3), Config { min_budget: 1, max_budget: 27, eta: 3.0, early_stopping_rate: 1 }, 0).unwrap();
        assert_eq!(a.budgets(), &[3, 9, 27]);
        assert!(Asha::new(Space::sequence(3, 3), Config { min_budget: 1, max_budget: 3, eta: 3.0, early_stopping_rate: 2 }, 0).is_err());
    }
}
