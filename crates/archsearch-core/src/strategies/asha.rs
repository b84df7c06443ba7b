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
//!
//! # State
//!
//! Per rung below the top, the state keeps each told trial's number, value
//! and whether it was promoted: never architectures (a [`Job::Resume`] names
//! the trial only): about 30 bytes of JSON per tell. The top rung's tells
//! decide nothing and are not kept. Saving and restoring stay linear in that
//! size (a saved state lists each rung best first, which restores without a
//! real sort).
//!
//! A rung is kept split at its promotion boundary: `upper` holds its best
//! `⌊|rung|/η⌋` trials, `lower` the others, and `open` indexes the complete,
//! not-yet-promoted trials of `upper`, so the trial to promote is the first
//! of `open`. A tell inserts one trial and moves at most one across the
//! boundary (`⌊n/η⌋` grows by at most one per trial when η > 1); an ask takes
//! the first of `open`. Both cost O(log |rung|) where sorting the rung on
//! every ask cost O(|rung| log |rung|), and the choice is the same.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};

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

/// How many of the `n` told trials of a rung may be promoted: `⌊n/η⌋`.
fn top(n: usize, eta: f64) -> usize {
    (n as f64 / eta + 1e-9).floor() as usize
}

/// A told trial's place in its rung, ordered best first: higher value first
/// (by `total_cmp`, a failed trial counting as -∞), ties to the earlier trial.
#[derive(Debug, Clone, Copy)]
struct Key {
    /// `None`: failed, never promoted.
    value: Option<f64>,
    trial: u64,
}

impl Key {
    fn rank_value(&self) -> f64 {
        self.value.unwrap_or(f64::NEG_INFINITY)
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank_value().total_cmp(&self.rank_value()).then(self.trial.cmp(&other.trial))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Key {}

/// A told trial as the state stores it: `(trial, value, promoted)`, the
/// value `None` for a failed trial.
type Told = (u64, Option<f64>, bool);

/// The told trials of one rung, split at the promotion boundary: every key
/// of `upper` ranks before every key of `lower`, and `upper` holds exactly
/// `⌊|rung|/η⌋` of them.
#[derive(Debug, Default)]
struct Rung {
    /// The best `⌊|rung|/η⌋` trials, each with whether it was promoted.
    upper: BTreeMap<Key, bool>,
    /// The complete, not-yet-promoted trials of `upper`, best first.
    open: BTreeSet<Key>,
    /// The other trials, each with whether it was promoted (a promoted trial
    /// falls below the boundary when better ones arrive).
    lower: BTreeMap<Key, bool>,
    /// The trials told at this rung, to refuse a second tell.
    trials: HashSet<u64>,
}

impl Rung {
    /// Rebuilds a rung from its told trials (in any order; best first, as
    /// [`Rung::told`] writes them, sorts in linear time).
    fn from_told(told: Vec<Told>, eta: f64) -> Result<Self, StrategyError> {
        let mut upper: Vec<(Key, bool)> = told.into_iter().map(|(trial, value, promoted)| (Key { value, trial }, promoted)).collect();
        upper.sort_unstable_by_key(|e| e.0);
        let trials: HashSet<u64> = upper.iter().map(|(k, _)| k.trial).collect();
        if trials.len() != upper.len() {
            return Err(StrategyError::State("a trial is told twice in one rung".into()));
        }
        let lower = upper.split_off(top(upper.len(), eta));
        let open = upper.iter().filter(|(k, promoted)| k.value.is_some() && !promoted).map(|(k, _)| *k).collect();
        Ok(Rung { upper: upper.into_iter().collect(), open, lower: lower.into_iter().collect(), trials })
    }

    /// The told trials, best first.
    fn told(&self) -> impl Iterator<Item = Told> + '_ {
        self.upper.iter().chain(&self.lower).map(|(k, &promoted)| (k.trial, k.value, promoted))
    }

    /// Records a told trial, then moves the boundary to `⌊|rung|/η⌋`.
    /// `false` (and nothing recorded) if the trial was told here before.
    fn insert(&mut self, key: Key, eta: f64) -> bool {
        if !self.trials.insert(key.trial) {
            return false;
        }
        match self.upper.last_key_value() {
            Some((worst, _)) if key < *worst => self.put_upper(key, false),
            _ => {
                self.lower.insert(key, false);
            }
        }
        let want = top(self.upper.len() + self.lower.len(), eta);
        while self.upper.len() < want {
            let (key, promoted) = self.lower.pop_first().expect("⌊n/η⌋ <= n");
            self.put_upper(key, promoted);
        }
        while self.upper.len() > want {
            let (key, promoted) = self.upper.pop_last().expect("upper is not empty");
            self.open.remove(&key);
            self.lower.insert(key, promoted);
        }
        true
    }

    fn put_upper(&mut self, key: Key, promoted: bool) {
        if key.value.is_some() && !promoted {
            self.open.insert(key);
        }
        self.upper.insert(key, promoted);
    }

    /// Marks as promoted, and returns, the best not-yet-promoted complete
    /// trial in the top `⌊|rung|/η⌋`, if any.
    fn promote(&mut self) -> Option<u64> {
        let key = self.open.pop_first()?;
        *self.upper.get_mut(&key).expect("open keys are in upper") = true;
        Some(key.trial)
    }
}

/// The state as [`Strategy::save_state`] writes it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    rng: Rng,
    /// The told trials of each rung below the top, best first.
    rungs: Vec<Vec<Told>>,
}

/// The state as written while `Job::Resume` carried an architecture: every
/// told trial with its architecture (ignored here), the top rung included,
/// and the promoted trials apart. Read so that studies in progress resume.
#[derive(Deserialize)]
struct Legacy {
    rng: Rng,
    rungs: Vec<Vec<LegacyEntry>>,
    promoted: Vec<BTreeSet<u64>>,
}

#[derive(Deserialize)]
struct LegacyEntry {
    trial: u64,
    value: Option<f64>,
}

impl Legacy {
    fn upgrade(self) -> Saved {
        let below_top = self.rungs.len().saturating_sub(1);
        let rungs = self
            .rungs
            .into_iter()
            .zip(self.promoted)
            .take(below_top)
            .map(|(rung, promoted)| rung.into_iter().map(|e| (e.trial, e.value, promoted.contains(&e.trial))).collect())
            .collect();
        Saved { rng: self.rng, rungs }
    }
}

pub struct Asha {
    space: Space,
    eta: f64,
    budgets: Vec<u64>,
    rng: Rng,
    /// Rungs `0 … budgets.len() - 2`: those a trial may be promoted out of.
    rungs: Vec<Rung>,
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
        let rungs = (1..budgets.len()).map(|_| Rung::default()).collect();
        Ok(Asha { space, eta: config.eta, budgets, rng: Rng::seed_from_u64(seed), rungs })
    }

    /// The rung budgets.
    pub fn budgets(&self) -> &[u64] {
        &self.budgets
    }
}

impl Strategy for Asha {
    fn name(&self) -> &str {
        "asha"
    }
    fn ask_job(&mut self, _next_trial: u64) -> Result<Job, StrategyError> {
        for k in (0..self.rungs.len()).rev() {
            if let Some(trial) = self.rungs[k].promote() {
                return Ok(Job::Resume { trial, budget: self.budgets[k + 1] });
            }
        }
        let arch = self.space.sample(&mut self.rng);
        Ok(Job::Start { arch, budget: Some(self.budgets[0]) })
    }
    fn tell_job(&mut self, trial: u64, _arch: &Architecture, budget: Option<u64>, outcome: Outcome) -> Result<Vec<u64>, StrategyError> {
        let k = budget.and_then(|b| self.budgets.iter().position(|&r| r == b)).ok_or_else(|| {
            StrategyError::State(format!("trial {trial} was told at budget {budget:?}, not a rung of {:?}", self.budgets))
        })?;
        let value = match outcome {
            Outcome::Complete { value } => Some(value),
            Outcome::Pruned { .. } | Outcome::Failed => None,
        };
        // The top rung (k = budgets.len() - 1) promotes nothing: not kept.
        if let Some(rung) = self.rungs.get_mut(k) {
            if !rung.insert(Key { value, trial }, self.eta) {
                return Err(StrategyError::State(format!("trial {trial} was already told at budget {}", self.budgets[k])));
            }
        }
        Ok(Vec::new())
    }
    fn max_budget(&self) -> Option<u64> {
        self.budgets.last().copied()
    }
    fn save_state(&self) -> Result<Vec<u8>, StrategyError> {
        to_state(&Saved { rng: self.rng.clone(), rungs: self.rungs.iter().map(|r| r.told().collect()).collect() })
    }
    fn load_state(&mut self, state: &[u8]) -> Result<(), StrategyError> {
        let saved = match from_state::<Saved>(state) {
            Ok(saved) => saved,
            Err(e) => from_state::<Legacy>(state).map_err(|_| e)?.upgrade(),
        };
        if saved.rungs.len() != self.rungs.len() {
            return Err(StrategyError::State(format!(
                "the state has {} rungs below the top, the ladder {:?} has {}",
                saved.rungs.len(),
                self.budgets,
                self.rungs.len()
            )));
        }
        self.rungs = saved.rungs.into_iter().map(|told| Rung::from_told(told, self.eta)).collect::<Result<_, _>>()?;
        self.rng = saved.rng;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::testing::{continue_sequential, run_sequential, score};
    use rand::Rng as _;

    /// The rule as written before the rung structure (Li et al. 2020,
    /// Algorithm 2, sorting the rung on every ask), to check the new one
    /// against.
    struct Reference {
        space: Space,
        eta: f64,
        budgets: Vec<u64>,
        rng: Rng,
        /// `(trial, value)` told at each rung, the top rung included.
        rungs: Vec<Vec<(u64, Option<f64>)>>,
        promoted: Vec<BTreeSet<u64>>,
    }

    impl Reference {
        fn new(space: Space, config: Config, seed: u64) -> Self {
            let budgets = Asha::new(space.clone(), config.clone(), seed).unwrap().budgets;
            let n = budgets.len();
            Reference {
                space,
                eta: config.eta,
                budgets,
                rng: Rng::seed_from_u64(seed),
                rungs: vec![Vec::new(); n],
                promoted: vec![BTreeSet::new(); n],
            }
        }

        fn promotable(&self, k: usize) -> Option<u64> {
            let rung = &self.rungs[k];
            let top = (rung.len() as f64 / self.eta + 1e-9).floor() as usize;
            let mut ranked: Vec<&(u64, Option<f64>)> = rung.iter().collect();
            ranked.sort_by(|a, b| {
                let (va, vb) = (a.1.unwrap_or(f64::NEG_INFINITY), b.1.unwrap_or(f64::NEG_INFINITY));
                vb.total_cmp(&va).then(a.0.cmp(&b.0))
            });
            ranked.into_iter().take(top).find(|e| e.1.is_some() && !self.promoted[k].contains(&e.0)).map(|e| e.0)
        }

        fn ask(&mut self) -> Job {
            for k in (0..self.budgets.len() - 1).rev() {
                if let Some(trial) = self.promotable(k) {
                    self.promoted[k].insert(trial);
                    return Job::Resume { trial, budget: self.budgets[k + 1] };
                }
            }
            Job::Start { arch: self.space.sample(&mut self.rng), budget: Some(self.budgets[0]) }
        }

        fn tell(&mut self, trial: u64, budget: u64, value: Option<f64>) {
            let k = self.budgets.iter().position(|&b| b == budget).unwrap();
            self.rungs[k].push((trial, value));
        }

        /// The state as `Asha` wrote it while `Job::Resume` carried an
        /// architecture.
        fn legacy_state(&self, archs: &[Architecture]) -> Vec<u8> {
            let rungs: Vec<Vec<serde_json::Value>> = self
                .rungs
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|&(trial, value)| serde_json::json!({ "trial": trial, "arch": archs[trial as usize], "value": value }))
                        .collect()
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({ "rng": self.rng, "rungs": rungs, "promoted": self.promoted })).unwrap()
        }
    }

    /// ASHA and the reference driven by the same random asks and tells, at
    /// most `workers` evaluations in flight, told in a random order.
    struct SideBySide {
        asha: Asha,
        reference: Reference,
        /// Each trial's architecture, by number.
        archs: Vec<Architecture>,
        /// `(trial, budget)` of the evaluations in flight.
        in_flight: Vec<(u64, u64)>,
        /// Draws the order of events and the values told.
        events: Rng,
        resumes: usize,
    }

    impl SideBySide {
        fn new(space: Space, config: Config, seed: u64) -> Self {
            SideBySide {
                asha: Asha::new(space.clone(), config.clone(), seed).unwrap(),
                reference: Reference::new(space, config, seed),
                archs: Vec::new(),
                in_flight: Vec::new(),
                events: Rng::seed_from_u64(seed ^ 0x5eed),
                resumes: 0,
            }
        }

        fn step(&mut self, workers: usize, value: Values) {
            if self.in_flight.is_empty() || (self.in_flight.len() < workers && self.events.random_bool(0.5)) {
                let next = self.archs.len() as u64;
                let job = self.asha.ask_job(next).unwrap();
                assert_eq!(job, self.reference.ask(), "after {} trials", self.archs.len());
                match job {
                    Job::Start { arch, budget } => {
                        self.archs.push(arch);
                        self.in_flight.push((next, budget.unwrap()));
                    }
                    Job::Resume { trial, budget } => {
                        self.resumes += 1;
                        self.in_flight.push((trial, budget));
                    }
                    Job::Wait => panic!("ASHA never waits"),
                }
            } else {
                let (trial, budget) = self.in_flight.swap_remove(self.events.random_range(0..self.in_flight.len()));
                let v = value(&mut self.events);
                let outcome = match v {
                    Some(value) => Outcome::Complete { value },
                    None if self.events.random_bool(0.5) => Outcome::Failed,
                    None => Outcome::Pruned { value: Some(1.0) },
                };
                assert_eq!(self.asha.tell_job(trial, &self.archs[trial as usize], Some(budget), outcome).unwrap(), Vec::<u64>::new());
                self.reference.tell(trial, budget, v);
            }
        }

        /// Replaces ASHA by one restored from its saved state.
        fn round_trip(&mut self, space: &Space, config: &Config) {
            let bytes = self.asha.save_state().unwrap();
            let mut restored = Asha::new(space.clone(), config.clone(), 12345).unwrap();
            restored.load_state(&bytes).unwrap();
            assert_eq!(restored.save_state().unwrap(), bytes);
            self.asha = restored;
        }
    }

    /// Draws the value of a tell (`None`: failed or pruned).
    type Values = fn(&mut Rng) -> Option<f64>;

    /// Values with many ties, and failures.
    fn tied(r: &mut Rng) -> Option<f64> {
        (!r.random_bool(0.15)).then(|| r.random_range(0..6) as f64)
    }

    /// Continuous values, and failures.
    fn continuous(r: &mut Rng) -> Option<f64> {
        (!r.random_bool(0.1)).then(|| r.random::<f64>() * 100.0 - 50.0)
    }

    /// Values that only `total_cmp` orders: ±∞, ±NaN, ±0 (JSON writes the
    /// non-finite as null, so these runs are not saved and restored).
    fn extreme(r: &mut Rng) -> Option<f64> {
        const V: [f64; 7] = [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -f64::NAN, 0.0, -0.0, 1.0];
        (!r.random_bool(0.15)).then(|| V[r.random_range(0..V.len())])
    }

    fn configs() -> Vec<Config> {
        let c = |min_budget, max_budget, eta, early_stopping_rate| Config { min_budget, max_budget, eta, early_stopping_rate };
        vec![c(1, 27, 3.0, 0), c(1, 81, 3.0, 1), c(1, 16, 2.0, 0), c(2, 50, 2.5, 0), c(1, 64, 4.0, 0), c(1, 9, 3.0, 0)]
    }

    #[test]
    fn promotes_exactly_as_sorting_the_rung_on_every_ask() {
        let space = Space::sequence(6, 4);
        let generators: [(Values, bool); 3] = [(tied, true), (continuous, true), (extreme, false)];
        for seed in 0..9u64 {
            let config = configs()[seed as usize % 6].clone();
            let (value, round_trips) = generators[seed as usize % 3];
            let workers = [1, 4, 16, 64][seed as usize % 4];
            let mut run = SideBySide::new(space.clone(), config.clone(), seed);
            for i in 0..3000 {
                run.step(workers, value);
                if round_trips && i % 97 == 0 {
                    run.round_trip(&space, &config);
                }
            }
            assert!(run.resumes > 100, "seed {seed}: only {} promotions", run.resumes);
        }
    }

    #[test]
    fn a_saved_state_round_trips_and_continues_the_same_run() {
        let space = Space::sequence(8, 5);
        let cfg = Config { min_budget: 1, max_budget: 27, eta: 3.0, early_stopping_rate: 0 };
        let mut a = Asha::new(space.clone(), cfg.clone(), 3).unwrap();
        let mut a_log = run_sequential(&mut a, 100, &score);
        let bytes = a.save_state().unwrap();
        let mut b = Asha::new(space, cfg, 99).unwrap();
        b.load_state(&bytes).unwrap();
        assert_eq!(b.save_state().unwrap(), bytes);
        let mut b_log = a_log.clone();
        continue_sequential(&mut a, &mut a_log, 100, &score);
        continue_sequential(&mut b, &mut b_log, 100, &score);
        assert!(a_log.jobs[100..].iter().any(|j| j.2 && j.0 < 50), "the continuation resumes trials of the first part");
        assert_eq!(format!("{a_log:?}"), format!("{b_log:?}"));
        // A state for another ladder is refused.
        let mut c = Asha::new(Space::sequence(8, 5), Config { min_budget: 1, max_budget: 9, eta: 3.0, early_stopping_rate: 0 }, 0).unwrap();
        assert!(matches!(c.load_state(&bytes), Err(StrategyError::State(_))));
    }

    #[test]
    fn a_state_with_architectures_from_before_is_read() {
        let space = Space::sequence(6, 4);
        let config = Config { min_budget: 1, max_budget: 27, eta: 3.0, early_stopping_rate: 0 };
        let mut run = SideBySide::new(space.clone(), config.clone(), 11);
        for _ in 0..800 {
            run.step(8, tied);
        }
        let legacy = run.reference.legacy_state(&run.archs);
        assert!(String::from_utf8_lossy(&legacy).contains("choices"));
        let mut restored = Asha::new(space, config, 0).unwrap();
        restored.load_state(&legacy).unwrap();
        assert_eq!(restored.save_state().unwrap(), run.asha.save_state().unwrap());
        run.asha = restored;
        for _ in 0..800 {
            run.step(8, tied);
        }
    }

    #[test]
    fn the_state_grows_by_a_few_bytes_per_tell_and_holds_no_architecture() {
        let space = Space::nb201();
        let mut asha = Asha::new(space.clone(), Config { min_budget: 1, max_budget: 81, eta: 3.0, early_stopping_rate: 0 }, 4).unwrap();
        let mut values = Rng::seed_from_u64(5);
        let mut archs = Vec::new();
        let mut sizes = Vec::new();
        for told in 1..=2000 {
            let next = archs.len() as u64;
            let (trial, budget) = match asha.ask_job(next).unwrap() {
                Job::Start { arch, budget } => {
                    archs.push(arch);
                    (next, budget.unwrap())
                }
                Job::Resume { trial, budget } => (trial, budget),
                Job::Wait => unreachable!(),
            };
            asha.tell_job(trial, &archs[trial as usize], Some(budget), Outcome::Complete { value: values.random::<f64>() }).unwrap();
            if told % 1000 == 0 {
                sizes.push(asha.save_state().unwrap());
            }
        }
        let per_tell = (sizes[1].len() - sizes[0].len()) as f64 / 1000.0;
        assert!(per_tell < 64.0, "{per_tell} bytes per tell ({} then {} bytes)", sizes[0].len(), sizes[1].len());
        let json = String::from_utf8(sizes[1].clone()).unwrap();
        assert!(!json.contains("arch") && !json.contains("choices"));
        assert!(archs.iter().take(50).all(|a| !json.contains(&space.canonical(a))));
    }

    #[test]
    fn a_trial_told_twice_at_a_rung_is_refused() {
        let mut asha =
            Asha::new(Space::sequence(3, 3), Config { min_budget: 1, max_budget: 9, eta: 3.0, early_stopping_rate: 0 }, 0).unwrap();
        let Job::Start { arch, .. } = asha.ask_job(0).unwrap() else { panic!() };
        asha.tell_job(0, &arch, Some(1), Outcome::Complete { value: 1.0 }).unwrap();
        let before = asha.save_state().unwrap();
        assert!(asha.tell_job(0, &arch, Some(1), Outcome::Complete { value: 2.0 }).is_err());
        assert!(asha.tell_job(0, &arch, Some(2), Outcome::Complete { value: 2.0 }).is_err(), "2 is not a rung");
        assert_eq!(asha.save_state().unwrap(), before);
    }

    #[test]
    fn promotes_as_soon_as_a_trial_is_in_the_top_third() {
        let mut asha =
            Asha::new(Space::sequence(8, 5), Config { min_budget: 1, max_budget: 9, eta: 3.0, early_stopping_rate: 0 }, 2).unwrap();
        let log = run_sequential(&mut asha, 60, &score);
        // Three bottom-rung trials come first; the fourth job is a promotion
        // of the best of them.
        assert!(log.jobs[..3].iter().all(|j| j.1 == 1 && !j.2));
        let best =
            (0..3u64).max_by(|a, b| score(&log.archs[*a as usize]).total_cmp(&score(&log.archs[*b as usize])).then(b.cmp(a))).unwrap();
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
