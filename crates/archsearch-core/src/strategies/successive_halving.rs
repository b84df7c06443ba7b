//! Successive halving.
//!
//! Jamieson & Talwalkar, "Non-stochastic Best Arm Identification and
//! Hyperparameter Optimization", AISTATS 2016; the form used as the inner
//! loop of Hyperband (Li, Jamieson, DeSalvo, Rostamizadeh & Talwalkar,
//! "Hyperband: A Novel Bandit-Based Approach to Hyperparameter
//! Optimization", JMLR 2017, Algorithm 1, lines 3–9).
//!
//! A *bracket* samples `n` architectures uniformly and evaluates each at the
//! smallest budget `r_0`. When every trial of a rung has been told, the best
//! `⌊n_i/η⌋` (at least one) are resumed at the next budget `r_{i+1} = η·r_i`
//! and the others are pruned: they stop at the step of their rung. The
//! survivors of the last rung are evaluated at `max_budget` and complete.
//! Brackets follow one another until the study's budget is spent.
//!
//! The rungs are synchronous: a rung is decided only once all its trials are
//! told, so with several workers some wait ([`Job::Wait`]) while the rung's
//! last trials run — the idle time ASHA removes.
//!
//! Defaults follow the papers: `η = 3`, and `n = ⌈η^s⌉` for a ladder of
//! `s + 1` rungs, so that one architecture reaches `max_budget` (the most
//! aggressive bracket of Hyperband).

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::space::{Architecture, Space};
use crate::strategy::{from_state, to_state, Job, Outcome, Rng, Strategy, StrategyError};

/// Settings of successive halving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Smallest budget (steps, e.g. epochs) a trial is evaluated at.
    pub min_budget: u64,
    /// Largest budget: a trial evaluated to it is complete.
    pub max_budget: u64,
    /// Reduction factor η: each rung keeps the best 1/η and gives them η
    /// times the budget (papers: 3).
    #[serde(default = "default_eta")]
    pub eta: f64,
    /// Architectures per bracket (default `⌈η^s⌉`, `s + 1` the number of rungs).
    #[serde(default)]
    pub n: Option<usize>,
}

pub(crate) fn default_eta() -> f64 {
    3.0
}

/// The rung budgets from `min` to `max`: `max·η^-s, …, max/η, max` with
/// `s = ⌊log_η(max/min)⌋`, rounded to whole steps. As in Hyperband the
/// ladder hangs from `max`, so its bottom rung is at least `min_budget` but
/// may be above it (min 12, max 200, η = 4: 13, 50, 200).
pub fn ladder(min: u64, max: u64, eta: f64) -> Result<Vec<u64>, StrategyError> {
    if !(eta > 1.0 && eta.is_finite()) {
        return Err(StrategyError::Config(format!("eta = {eta} must be > 1")));
    }
    if min == 0 || min > max {
        return Err(StrategyError::Config(format!("need 1 <= min_budget <= max_budget (got {min} and {max})")));
    }
    // The tolerance keeps η = max/min from rounding s down to 0.
    let s = ((max as f64 / min as f64).ln() / eta.ln() + 1e-9).floor() as i32;
    let mut budgets: Vec<u64> = (0..=s).map(|i| ((max as f64) * eta.powi(i - s)).round().max(1.0) as u64).collect();
    budgets.dedup();
    Ok(budgets)
}

/// How many of `n` told trials a rung promotes: `⌊n/η⌋`, at least one.
pub(crate) fn keep(n: usize, eta: f64) -> usize {
    ((n as f64 / eta + 1e-9).floor() as usize).max(1)
}

/// One trial of a rung. Only the trial number: a resumed trial's
/// architecture is the runner's to read back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    trial: u64,
    /// `Some` once told (`None` inside: failed).
    told: Option<Option<f64>>,
    /// Asked at this rung's budget (for resumed entries).
    asked: bool,
}

/// One run of successive halving: `n` architectures over a budget ladder.
/// Hyperband runs a sequence of these.
///
/// Its size is bounded by `n`: `entries` holds the trials of the current
/// rung only (the survivors of the rung below), and a finished bracket is
/// replaced by the next one, so nothing accumulates across rungs or brackets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Bracket {
    budgets: Vec<u64>,
    n: usize,
    eta: f64,
    rung: usize,
    started: usize,
    entries: Vec<Entry>,
}

impl Bracket {
    pub(crate) fn new(budgets: Vec<u64>, n: usize, eta: f64) -> Self {
        Bracket { budgets, n: n.max(1), eta, rung: 0, started: 0, entries: Vec::new() }
    }

    /// The next job of this bracket, or `None` when it is finished.
    pub(crate) fn next(&mut self, next_trial: u64, space: &Space, rng: &mut Rng) -> Option<Job> {
        let budget = self.budgets[self.rung];
        if self.rung == 0 && self.started < self.n {
            let arch = space.sample(rng);
            self.entries.push(Entry { trial: next_trial, told: None, asked: true });
            self.started += 1;
            return Some(Job::Start { arch, budget: Some(budget) });
        }
        if let Some(e) = self.entries.iter_mut().find(|e| !e.asked) {
            e.asked = true;
            return Some(Job::Resume { trial: e.trial, budget });
        }
        if self.finished() {
            None
        } else {
            Some(Job::Wait)
        }
    }

    pub(crate) fn finished(&self) -> bool {
        self.entries.is_empty() && self.started >= self.n
    }

    /// Records the outcome of `trial` at the current rung; once the rung is
    /// complete, promotes its best and returns the trials it prunes.
    pub(crate) fn tell(&mut self, trial: u64, budget: Option<u64>, outcome: Outcome) -> Result<Vec<u64>, StrategyError> {
        let rung_budget = self.budgets[self.rung];
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.trial == trial && e.told.is_none())
            .ok_or_else(|| StrategyError::State(format!("trial {trial} is not running in the current rung")))?;
        if budget != Some(rung_budget) {
            return Err(StrategyError::State(format!("trial {trial} was told at budget {budget:?}, its rung is at {rung_budget}")));
        }
        e.told = Some(match outcome {
            Outcome::Complete { value } => Some(value),
            Outcome::Pruned { .. } | Outcome::Failed => None,
        });
        let rung_done = (self.rung > 0 || self.started >= self.n) && self.entries.iter().all(|e| e.told.is_some());
        if !rung_done {
            return Ok(Vec::new());
        }
        let entries = std::mem::take(&mut self.entries);
        if self.rung + 1 == self.budgets.len() {
            return Ok(Vec::new()); // The last rung: its trials are complete.
        }
        let n_i = entries.len();
        let mut ok: Vec<(f64, Entry)> = entries.into_iter().filter_map(|e| e.told.flatten().map(|v| (v, e))).collect();
        // Best first; ties go to the earlier trial.
        ok.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.trial.cmp(&b.1.trial)));
        let k = keep(n_i, self.eta).min(ok.len());
        let pruned = ok[k..].iter().map(|(_, e)| e.trial).collect();
        self.rung += 1;
        self.entries = ok.into_iter().take(k).map(|(_, e)| Entry { told: None, asked: false, ..e }).collect();
        Ok(pruned)
    }
}

#[derive(Serialize, Deserialize)]
struct State {
    rng: Rng,
    bracket: Bracket,
}

pub struct SuccessiveHalving {
    space: Space,
    config: Config,
    budgets: Vec<u64>,
    n: usize,
    state: State,
}

impl SuccessiveHalving {
    pub fn new(space: Space, config: Config, seed: u64) -> Result<Self, StrategyError> {
        let budgets = ladder(config.min_budget, config.max_budget, config.eta)?;
        let s = budgets.len() as i32 - 1;
        let n = config.n.unwrap_or_else(|| config.eta.powi(s).ceil() as usize);
        if n == 0 {
            return Err(StrategyError::Config("n must be >= 1".into()));
        }
        let bracket = Bracket::new(budgets.clone(), n, config.eta);
        Ok(SuccessiveHalving { space, config, budgets, n, state: State { rng: Rng::seed_from_u64(seed), bracket } })
    }

    /// The rung budgets of every bracket.
    pub fn budgets(&self) -> &[u64] {
        &self.budgets
    }

    /// Architectures each bracket starts.
    pub fn bracket_size(&self) -> usize {
        self.n
    }
}

impl Strategy for SuccessiveHalving {
    fn name(&self) -> &str {
        "successive-halving"
    }
    fn ask_job(&mut self, next_trial: u64) -> Result<Job, StrategyError> {
        let st = &mut self.state;
        if let Some(job) = st.bracket.next(next_trial, &self.space, &mut st.rng) {
            return Ok(job);
        }
        st.bracket = Bracket::new(self.budgets.clone(), self.n, self.config.eta);
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
    use crate::strategies::testing::{continue_sequential, run_sequential, score};

    #[test]
    fn ladders_are_geometric_and_end_at_the_max() {
        assert_eq!(ladder(1, 81, 3.0).unwrap(), vec![1, 3, 9, 27, 81]);
        assert_eq!(ladder(1, 10, 3.0).unwrap(), vec![1, 3, 10]);
        assert_eq!(ladder(12, 200, 200.0 / 12.0).unwrap(), vec![12, 200]);
        assert_eq!(ladder(5, 5, 3.0).unwrap(), vec![5]);
        assert!(ladder(0, 5, 3.0).is_err() && ladder(6, 5, 3.0).is_err() && ladder(1, 5, 1.0).is_err());
    }

    #[test]
    fn a_bracket_halves_its_rungs_and_keeps_the_best() {
        let space = Space::sequence(6, 5);
        let mut sh = SuccessiveHalving::new(space, Config { min_budget: 1, max_budget: 27, eta: 3.0, n: None }, 7).unwrap();
        let log = run_sequential(&mut sh, 27 + 9 + 3 + 1, &score);
        let per_budget = |b: u64| log.jobs.iter().filter(|j| j.1 == b).count();
        assert_eq!([per_budget(1), per_budget(3), per_budget(9), per_budget(27)], [27, 9, 3, 1]);
        // Every trial but the survivor is pruned once, the survivor is the best.
        assert_eq!(log.pruned.len(), 26);
        let survivor = log.jobs.last().unwrap().0;
        assert!(!log.pruned.contains(&survivor));
        let best = log.archs.iter().map(score).fold(f64::MIN, f64::max);
        assert_eq!(score(&log.archs[survivor as usize]), best);
        // The promoted of a rung are the best of the rung below.
        let rung3: Vec<u64> = log.jobs.iter().filter(|j| j.1 == 3).map(|j| j.0).collect();
        let mut ranked: Vec<u64> = (0..27).collect();
        ranked.sort_by(|a, b| score(&log.archs[*b as usize]).total_cmp(&score(&log.archs[*a as usize])).then(a.cmp(b)));
        assert_eq!(rung3, ranked[..9].to_vec());
        // The next bracket starts fresh at the bottom.
        let mut next = log.clone();
        continue_sequential(&mut sh, &mut next, 1, &score);
        assert_eq!(next.jobs[log.jobs.len()], (log.archs.len() as u64, 1, false));
        // The finished bracket left nothing behind: the state holds the new
        // bracket's one trial.
        assert_eq!((sh.state.bracket.rung, sh.state.bracket.entries.len()), (0, 1));
    }

    #[test]
    fn a_rung_waits_for_its_last_trial_and_failures_are_not_promoted() {
        let space = Space::sequence(4, 3);
        let mut sh = SuccessiveHalving::new(space, Config { min_budget: 1, max_budget: 3, eta: 3.0, n: Some(3) }, 1).unwrap();
        let mut asked = Vec::new();
        for t in 0..3 {
            match sh.ask_job(t).unwrap() {
                Job::Start { arch, budget } => asked.push((t, arch, budget)),
                j => panic!("{j:?}"),
            }
        }
        assert_eq!(sh.ask_job(3).unwrap(), Job::Wait);
        let (t0, a0, _) = &asked[0];
        sh.tell_job(*t0, a0, Some(1), Outcome::Complete { value: 9.0 }).unwrap();
        sh.tell_job(1, &asked[1].1, Some(1), Outcome::Failed).unwrap();
        assert_eq!(sh.ask_job(3).unwrap(), Job::Wait);
        let pruned = sh.tell_job(2, &asked[2].1, Some(1), Outcome::Complete { value: 1.0 }).unwrap();
        assert_eq!(pruned, vec![2]);
        assert_eq!(sh.ask_job(3).unwrap(), Job::Resume { trial: 0, budget: 3 });
        assert!(sh.tell_job(2, &asked[2].1, Some(3), Outcome::Complete { value: 1.0 }).is_err(), "a pruned trial cannot be told");
    }

    #[test]
    fn a_restored_state_continues_the_same_run() {
        let space = Space::sequence(6, 5);
        let cfg = Config { min_budget: 1, max_budget: 9, eta: 3.0, n: None };
        let mut a = SuccessiveHalving::new(space.clone(), cfg.clone(), 3).unwrap();
        let mut a_log = run_sequential(&mut a, 10, &score);
        let mut b = SuccessiveHalving::new(space, cfg, 99).unwrap();
        b.load_state(&a.save_state().unwrap()).unwrap();
        let mut b_log = a_log.clone();
        continue_sequential(&mut a, &mut a_log, 20, &score);
        continue_sequential(&mut b, &mut b_log, 20, &score);
        assert!(a_log.jobs[10..].iter().any(|j| j.2), "the continuation resumes trials of the first part");
        assert_eq!(format!("{a_log:?}"), format!("{b_log:?}"));
    }
}
