//! Running a study: the ask → evaluate → tell loop over a store.
//!
//! Every ask and every tell is one store transaction that also saves the
//! strategy's state, so the store is consistent after a crash at any moment.
//! On start, trials left RUNNING by a dead process are run again in place
//! (same number, same architecture, attempts + 1): the saved strategy state
//! already accounts for having asked them, so the resumed study continues
//! exactly as an uninterrupted one would.

use std::sync::Arc;

use anyhow::{Context, Result};
use archsearch_core::{Architecture, Direction, Outcome, Space, Strategy, TrialState};
use archsearch_store::{Finish, NewStudy, NewTrial, Storage, StudyRecord, TrialRecord};
use archsearch_tasks::{Reporter, Task, TrialContext};

use crate::config::Config;
use archsearch_train::DeviceChoice;

/// A running trial's intermediate values go straight to the store.
struct StoreReporter<'a> {
    store: &'a mut dyn Storage,
    trial: i64,
    error: Option<String>,
}

impl Reporter for StoreReporter<'_> {
    fn report(&mut self, step: u64, value: f64) {
        if let Err(e) = self.store.report(self.trial, step, value) {
            self.error.get_or_insert(e.to_string());
        }
    }
}

/// The budget of a study.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub trials: Option<u64>,
    pub cost: Option<f64>,
}

impl Budget {
    fn reached(&self, c: &archsearch_store::Counts) -> bool {
        self.trials.is_some_and(|t| c.started >= t) || self.cost.is_some_and(|b| c.cost >= b)
    }
}

/// A study opened on a store, ready to run.
pub struct Study {
    store: Box<dyn Storage>,
    record: StudyRecord,
    /// The config the study runs with (the stored one when resuming).
    config: Config,
    space: Space,
    task: Arc<dyn Task>,
    strategy: Box<dyn Strategy>,
    budget: Budget,
    owner: String,
    /// Strategy-state version this process last saw.
    version: u64,
    /// Where trials keep their checkpoints (`trial-N/` inside).
    checkpoint_root: Option<std::path::PathBuf>,
}

/// What happened to one trial, for progress displays.
#[derive(Debug, Clone)]
pub struct TrialEvent {
    pub number: u64,
    pub state: TrialState,
    pub value: Option<f64>,
    pub resumed: bool,
}

impl Study {
    /// Opens (or creates) the study of `config` in `store`. An existing study
    /// is resumed with its *stored* config; the given one must then name the
    /// same study.
    pub fn open(config: &Config, mut store: Box<dyn Storage>, device: Option<DeviceChoice>) -> Result<Self> {
        let new = NewStudy {
            name: config.name().to_string(),
            config: config.to_toml(),
            seed: config.study.seed,
            direction: config.study.direction,
        };
        let (record, created) = store.open_study(&new)?;
        let stored: Config = if created {
            config.clone()
        } else {
            toml::from_str(&record.config).with_context(|| format!("stored config of study `{}`", record.name))?
        };
        if !created && stored.to_toml() != new.config {
            tracing::warn!(study = %record.name, "the study exists with another config; resuming it with its stored config");
        }
        let space = stored.space()?;
        let task = stored.task(device)?;
        let mut strategy = stored.strategy.build(&space, record.seed)?;
        let mut version = 0;
        if let Some((v, bytes)) = store.strategy_state(record.id)? {
            strategy.load_state(&bytes).context("stored strategy state")?;
            version = v;
        }
        let budget = Budget { trials: stored.study.trials, cost: stored.study.cost };
        let token = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Ok(Study {
            store,
            record,
            config: stored,
            space,
            task,
            strategy,
            budget,
            owner: archsearch_store::owner_id(token),
            version,
            checkpoint_root: None,
        })
    }

    /// Another runner of the same study on its own store connection, sharing
    /// this one's task (and so its data): a worker of a pool.
    pub fn worker(&self, store: Box<dyn Storage>) -> Result<Study> {
        let mut strategy = self.config.strategy.build(&self.space, self.record.seed)?;
        let mut version = 0;
        if let Some((v, bytes)) = store.strategy_state(self.record.id)? {
            strategy.load_state(&bytes).context("stored strategy state")?;
            version = v;
        }
        let token = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Ok(Study {
            store,
            record: self.record.clone(),
            config: self.config.clone(),
            space: self.space.clone(),
            task: self.task.clone(),
            strategy,
            budget: self.budget,
            owner: archsearch_store::owner_id(token ^ 0x5851_F42D_4C95_7F2D),
            version,
            checkpoint_root: self.checkpoint_root.clone(),
        })
    }

    /// The config the study runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs the study with `workers` runners at once (each a thread with its
    /// own connection from `connect`), until the budget is reached.
    pub fn run_parallel(
        &mut self,
        workers: usize,
        connect: &(dyn Fn() -> Result<Box<dyn Storage>> + Sync),
        on_trial: &(dyn Fn(&TrialEvent) + Sync),
    ) -> Result<()> {
        self.rerun_orphans(on_trial)?;
        let mut others = (1..workers).map(|_| self.worker(connect()?)).collect::<Result<Vec<_>>>()?;
        std::thread::scope(|scope| {
            let handles: Vec<_> = others.iter_mut().map(|w| scope.spawn(move || w.run_loop(on_trial))).collect();
            let mine = self.run_loop(on_trial);
            let mut result = mine;
            for h in handles {
                let r = h.join().map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
                result = result.and(r);
            }
            result
        })
    }

    /// Lets trials checkpoint under `root` (`root/STUDY/trial-N/`), so a trial
    /// killed mid-training resumes from its last checkpoint.
    pub fn with_checkpoints(mut self, root: std::path::PathBuf) -> Self {
        self.checkpoint_root = Some(root.join(&self.record.name));
        self
    }

    /// The task the study evaluates with.
    pub fn task(&self) -> &Arc<dyn Task> {
        &self.task
    }

    pub fn space(&self) -> &Space {
        &self.space
    }

    pub fn record(&self) -> &StudyRecord {
        &self.record
    }
    pub fn budget(&self) -> Budget {
        self.budget
    }
    pub fn store(&self) -> &dyn Storage {
        self.store.as_ref()
    }

    /// Runs until the budget is reached, calling `on_trial` after each trial.
    pub fn run(&mut self, on_trial: &(dyn Fn(&TrialEvent) + Sync)) -> Result<()> {
        self.rerun_orphans(on_trial)?;
        self.run_loop(on_trial)
    }

    /// Runs again, in place, the trials a dead process left RUNNING.
    fn rerun_orphans(&mut self, on_trial: &(dyn Fn(&TrialEvent) + Sync)) -> Result<()> {
        for t in self.store.claim_orphans(self.record.id, &self.owner, 300.0)? {
            let arch: Architecture = serde_json::from_str(&t.arch_json).with_context(|| format!("trial {}", t.number))?;
            tracing::info!(trial = t.number, attempt = t.attempts, "re-running a trial left unfinished");
            let ev = self.evaluate_and_tell(t.id, t.number, &arch)?;
            on_trial(&TrialEvent { resumed: true, ..ev });
        }
        Ok(())
    }

    fn run_loop(&mut self, on_trial: &(dyn Fn(&TrialEvent) + Sync)) -> Result<()> {
        archsearch_rl::init_thread(1);
        loop {
            let mut asked = None;
            let budget = self.budget;
            let (space, strategy, seed) = (&self.space, &mut self.strategy, self.record.seed);
            let started = self.store.ask(self.record.id, self.version, &self.owner, &mut |stored, counts| {
                if let Some(bytes) = stored {
                    strategy.load_state(bytes)?;
                }
                if budget.reached(counts) {
                    return Ok(None);
                }
                let arch = strategy.ask()?;
                space.validate(&arch)?;
                let trial = NewTrial {
                    arch: space.canonical(&arch),
                    arch_json: serde_json::to_string(&arch)?,
                    seed: trial_seed(seed, counts.started),
                };
                asked = Some(arch);
                Ok(Some((strategy.save_state()?, trial)))
            })?;
            let Some(started) = started else { break };
            self.version = started.state_version;
            let arch = asked.expect("a started trial was asked");
            let ev = self.evaluate_and_tell(started.trial_id, started.number, &arch)?;
            on_trial(&ev);
        }
        Ok(())
    }

    fn evaluate_and_tell(&mut self, trial: i64, number: u64, arch: &Architecture) -> Result<TrialEvent> {
        let mut reporter = StoreReporter { store: self.store.as_mut(), trial, error: None };
        let mut ctx = TrialContext {
            number,
            seed: trial_seed(self.record.seed, number),
            checkpoint_dir: self.checkpoint_root.as_ref().map(|r| r.join(format!("trial-{number}"))),
            reporter: &mut reporter,
        };
        let result = self.task.evaluate(arch, &mut ctx);
        if let Some(e) = reporter.error {
            anyhow::bail!("trial {number}: recording an intermediate value failed: {e}");
        }
        let direction = self.record.direction;
        let (finish, outcome) = match result {
            Ok(ev) if ev.value.is_finite() => (
                Finish { state: TrialState::Complete, value: Some(ev.value), metrics: ev.metrics, cost: ev.cost, error: None },
                Outcome::Complete { value: direction.fitness(ev.value) },
            ),
            Ok(ev) => (
                Finish {
                    state: TrialState::Fail,
                    value: None,
                    metrics: ev.metrics,
                    cost: ev.cost,
                    error: Some(format!("objective is {}", ev.value)),
                },
                Outcome::Failed,
            ),
            Err(e) => (
                Finish { state: TrialState::Fail, value: None, metrics: Default::default(), cost: 0.0, error: Some(e.to_string()) },
                Outcome::Failed,
            ),
        };
        if let Some(e) = &finish.error {
            tracing::warn!(trial = number, error = %e, "trial failed");
        }
        let strategy = &mut self.strategy;
        self.version = self.store.tell(self.record.id, trial, self.version, &finish, &mut |stored| {
            if let Some(bytes) = stored {
                strategy.load_state(bytes)?;
            }
            strategy.tell(arch, outcome)?;
            Ok(strategy.save_state()?)
        })?;
        Ok(TrialEvent { number, state: finish.state, value: finish.value, resumed: false })
    }
}

impl Drop for Study {
    fn drop(&mut self) {
        archsearch_store::release_owner(&self.owner);
    }
}

/// The seed of trial `number` of a study seeded `seed` (SplitMix64 mixing).
pub fn trial_seed(seed: u64, number: u64) -> u64 {
    let mut z = seed ^ number.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The best complete trial of a study, if any.
pub fn best(trials: &[TrialRecord], direction: Direction) -> Option<&TrialRecord> {
    trials
        .iter()
        .filter(|t| t.state == TrialState::Complete && t.value.is_some())
        .fold(None, |best: Option<&TrialRecord>, t| match best {
            Some(b) if !direction.better(t.value.unwrap(), b.value.unwrap()) => Some(b),
            _ => Some(t),
        })
}
