//! Hyperband.
//!
//! Li, Jamieson, DeSalvo, Rostamizadeh & Talwalkar, "Hyperband: A Novel
//! Bandit-Based Approach to Hyperparameter Optimization", JMLR 2017,
//! Algorithm 1. Successive halving needs to know how aggressively to prune
//! (many architectures on small budgets, or few on large ones); Hyperband
//! hedges by running brackets `s = s_max, …, 0` in turn. Bracket `s` starts
//!
//! ```text
//! n = ⌈(s_max + 1) / (s + 1) · η^s⌉   architectures at budget   r = R·η^-s
//! ```
//!
//! and runs successive halving on them (keep the best `⌊n_i/η⌋`, give them η
//! times the budget) up to `R = max_budget`. With `R/r_min = 81` and η = 3
//! the brackets are the paper's Table 1: 81×1, 34×3, 15×9, 8×27, 5×81. After
//! bracket 0 the cycle starts again, until the study's budget is spent.
//!
//! Architectures are sampled uniformly, as in the paper. Rungs are
//! synchronous (see [`super::successive_halving`]).

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::successive_halving::{default_eta, ladder, Bracket};
use crate::space::{Architecture, Space};
use crate::strategy::{from_state, to_state, Job, Outcome, Rng, Strategy, StrategyError};

/// Settings of Hyperband.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Smallest budget (steps, e.g. epochs) `r_min`.
    pub min_budget: u64,
    /// Largest budget `R`: a trial evaluated to it is complete.
    pub max_budget: u64,
    /// Reduction factor η (paper: 3).
    #[serde(default = "default_eta")]
    pub eta: f64,
}

#[derive(Serialize, Deserialize)]
struct State {
    rng: Rng,
    /// The running bracket's `s`.
    s: usize,
    /// The running bracket only: a finished one is dropped when the next
    /// starts, so the state never grows past one bracket's trials.
    bracket: Bracket,
}

pub struct Hyperband {
    space: Space,
    eta: f64,
    /// The full ladder `r_min … R`; bracket `s` uses its last `s + 1` rungs.
    budgets: Vec<u64>,
    state: State,
}

impl Hyperband {
    pub fn new(space: Space, config: Config, seed: u64) -> Result<Self, StrategyError> {
        let budgets = ladder(config.min_budget, config.max_budget, config.eta)?;
        let s_max = budgets.len() - 1;
        let bracket = bracket(&budgets, s_max, config.eta);
        Ok(Hyperband { space, eta: config.eta, budgets, state: State { rng: Rng::seed_from_u64(seed), s: s_max, bracket } })
    }

    /// `(n, r)` of every bracket, `s = s_max` first.
    pub fn brackets(&self) -> Vec<(usize, u64)> {
        let s_max = self.budgets.len() - 1;
        (0..=s_max).rev().map(|s| (bracket_size(s_max, s, self.eta), self.budgets[s_max - s])).collect()
    }
}

fn bracket_size(s_max: usize, s: usize, eta: f64) -> usize {
    ((s_max + 1) as f64 / (s + 1) as f64 * eta.powi(s as i32) - 1e-9).ceil() as usize
}

fn bracket(budgets: &[u64], s: usize, eta: f64) -> Bracket {
    let s_max = budgets.len() - 1;
    Bracket::new(budgets[s_max - s..].to_vec(), bracket_size(s_max, s, eta), eta)
}

impl Strategy for Hyperband {
    fn name(&self) -> &str {
        "hyperband"
    }
    fn ask_job(&mut self, next_trial: u64) -> Result<Job, StrategyError> {
        let st = &mut self.state;
        if let Some(job) = st.bracket.next(next_trial, &self.space, &mut st.rng) {
            return Ok(job);
        }
        st.s = if st.s == 0 { self.budgets.len() - 1 } else { st.s - 1 };
        st.bracket = bracket(&self.budgets, st.s, self.eta);
        Ok(st.bracket.next(next_trial, &self.space, &mut st.rng).expect("a new bracket starts a trial"))
    }
    fn tell_job(&mut self, trial: u64, _arch: &Architecture, budget: Option<u64>, outcome: Outcome) -> Result<Vec<u64>, StrategyError> {
        self.state.bracket.tell(trial, budget, outcome)
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
    fn brackets_are_the_papers_table_1() {
        let hb = Hyperband::new(Space::sequence(3, 3), Config { min_budget: 1, max_budget: 81, eta: 3.0 }, 0).unwrap();
        assert_eq!(hb.brackets(), vec![(81, 1), (34, 3), (15, 9), (8, 27), (5, 81)]);
        let nb = Hyperband::new(Space::sequence(3, 3), Config { min_budget: 12, max_budget: 200, eta: 200.0 / 12.0 }, 0).unwrap();
        assert_eq!(nb.brackets(), vec![(17, 12), (2, 200)]);
    }

    #[test]
    fn one_cycle_runs_every_bracket_then_starts_again() {
        let mut hb = Hyperband::new(Space::sequence(8, 5), Config { min_budget: 1, max_budget: 9, eta: 3.0 }, 5).unwrap();
        // Brackets: 9×1 → 3×3 → 1×9; 5×3 → 1×9; 3×9.
        let jobs = (9 + 3 + 1) + (5 + 1) + 3;
        let log = run_sequential(&mut hb, jobs, &score);
        let starts: Vec<u64> = log.jobs.iter().filter(|j| !j.2).map(|j| j.1).collect();
        assert_eq!(starts, [vec![1; 9], vec![3; 5], vec![9; 3]].concat());
        let resumes: Vec<u64> = log.jobs.iter().filter(|j| j.2).map(|j| j.1).collect();
        assert_eq!(resumes, vec![3, 3, 3, 9, 9]);
        assert_eq!(log.pruned.len(), 8 + 4);
        let again = run_sequential(&mut hb, 1, &score);
        assert_eq!(again.jobs[0].1, 1);
    }
}
