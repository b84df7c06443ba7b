//! Running a study: the ask → evaluate → tell loop over a store.
//!
//! Every ask and every tell is one store transaction that also saves the
//! strategy's state, so the store is consistent after a crash at any moment.
//! On start, trials left RUNNING by a dead process are run again in place
//! (same number, same architecture, same budget, attempts + 1): the saved
//! strategy state already accounts for having asked them, so the resumed
//! study continues exactly as an uninterrupted one would.
//!
//! Multi-fidelity strategies ask for jobs with budgets ([`Job`]): a trial
//! evaluated below the strategy's largest budget is PAUSED, and later resumed
//! (the same trial, continuing from its checkpoint) or PRUNED at its step.
//! When the study's budget is spent, trials still paused are pruned. A
//! `trials` budget counts architectures: once it is reached, paused trials
//! may still be resumed, but no new one starts. A `cost` budget stops
//! everything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use archsearch_core::{Architecture, Direction, Job, Outcome, Space, Strategy, TrialState};
use archsearch_store::{Finish, Launch, NewStudy, NewTrial, Storage, StudyRecord, TrialRecord};
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
    /// No more evaluations at all.
    fn spent(&self, c: &archsearch_store::Counts) -> bool {
        self.cost.is_some_and(|b| c.cost >= b)
    }
    /// No new trials (paused ones may still resume).
    fn no_new_trials(&self, c: &archsearch_store::Counts) -> bool {
        self.spent(c) || self.trials.is_some_and(|t| c.started >= t)
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
    /// COMPLETE, FAIL, or PAUSED (evaluated below the largest budget).
    pub state: TrialState,
    pub value: Option<f64>,
    /// The budget the trial was evaluated to (`None`: in full).
    pub budget: Option<u64>,
    /// Re-run after a crash.
    pub resumed: bool,
    /// Paused trials the strategy pruned on this tell.
    pub pruned: usize,
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
        let ladder = stored.strategy.budgets(&space)?;
        for &b in &ladder {
            task.check_budget(b).with_context(|| format!("[strategy] `{}` asks for budget {b} (its ladder: {ladder:?})", stored.strategy.name()))?;
        }
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
        self.warn_if_no_checkpoints();
        self.rerun_orphans(on_trial)?;
        let mut others = (1..workers).map(|_| self.worker(connect()?)).collect::<Result<Vec<_>>>()?;
        // A worker that fails stops the others (which may wait on its trial).
        let abort = AtomicBool::new(false);
        let abort = &abort;
        std::thread::scope(|scope| {
            let handles: Vec<_> = others.iter_mut().map(|w| scope.spawn(move || w.run_loop(on_trial, abort))).collect();
            let mine = self.run_loop(on_trial, abort);
            let mut result = mine;
            for h in handles {
                let r = h.join().map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
                result = result.and(r);
            }
            result
        })?;
        self.finish()
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
        self.warn_if_no_checkpoints();
        self.rerun_orphans(on_trial)?;
        self.run_loop(on_trial, &AtomicBool::new(false))?;
        self.finish()
    }

    fn warn_if_no_checkpoints(&self) {
        if self.checkpoint_root.is_none() && self.strategy.max_budget().is_some() {
            tracing::warn!(
                study = %self.record.name,
                "no checkpoint folder (an in-memory store?): a trial resumed to a larger budget is evaluated again from the start"
            );
        }
    }

    /// The budget is spent: trials still paused will never resume.
    fn finish(&mut self) -> Result<()> {
        let n = self.store.prune_paused(self.record.id)?;
        if n > 0 {
            tracing::info!(study = %self.record.name, pruned = n, "pruned the trials still paused at the end of the study");
        }
        Ok(())
    }

    /// Runs again, in place, the trials a dead process left RUNNING.
    fn rerun_orphans(&mut self, on_trial: &(dyn Fn(&TrialEvent) + Sync)) -> Result<()> {
        for t in self.store.claim_orphans(self.record.id, &self.owner, 300.0)? {
            let arch: Architecture = serde_json::from_str(&t.arch_json).with_context(|| format!("trial {}", t.number))?;
            tracing::info!(trial = t.number, attempt = t.attempts, "re-running a trial left unfinished");
            let ev = self.evaluate_and_tell(t.id, t.number, &arch, t.step)?;
            on_trial(&TrialEvent { resumed: true, ..ev });
        }
        Ok(())
    }

    fn run_loop(&mut self, on_trial: &(dyn Fn(&TrialEvent) + Sync), abort: &AtomicBool) -> Result<()> {
        let result = self.run_jobs(on_trial, abort);
        if result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        result
    }

    fn run_jobs(&mut self, on_trial: &(dyn Fn(&TrialEvent) + Sync), abort: &AtomicBool) -> Result<()> {
        archsearch_rl::init_thread(1);
        let mut waits = 0u32;
        loop {
            if abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            let mut asked = None;
            let mut wait = false;
            let budget = self.budget;
            let (space, strategy, seed) = (&self.space, &mut self.strategy, self.record.seed);
            let started = self.store.ask(self.record.id, self.version, &self.owner, &mut |stored, counts| {
                if let Some(bytes) = stored {
                    strategy.load_state(bytes)?;
                }
                if budget.spent(counts) {
                    return Ok(None);
                }
                // Past a `trials` budget only resumes may run: keep the state
                // to take back an ask for a new trial.
                let before = budget.no_new_trials(counts).then(|| strategy.save_state()).transpose()?;
                let launch = match strategy.ask_job(counts.started)? {
                    Job::Wait => {
                        wait = true;
                        return Ok(None);
                    }
                    Job::Start { .. } if before.is_some() => {
                        strategy.load_state(before.as_deref().expect("saved above"))?;
                        return Ok(None);
                    }
                    Job::Start { arch, budget } => {
                        space.validate(&arch)?;
                        let trial = NewTrial {
                            arch: space.canonical(&arch),
                            arch_json: serde_json::to_string(&arch)?,
                            seed: trial_seed(seed, counts.started),
                            step: budget,
                        };
                        asked = Some((arch, budget));
                        Launch::New(trial)
                    }
                    Job::Resume { trial, arch, budget } => {
                        asked = Some((arch, Some(budget)));
                        Launch::Resume { number: trial, step: budget }
                    }
                };
                Ok(Some((strategy.save_state()?, launch)))
            });
            let started = match started {
                // Another process ended the study and pruned the trial this
                // strategy (in a state it had not yet seen) wanted to resume.
                Err(archsearch_store::StoreError::NotPaused(n, _)) => {
                    tracing::info!(trial = n, "the study was finished by another runner");
                    break;
                }
                other => other?,
            };
            let Some(started) = started else {
                if !wait {
                    break;
                }
                // A synchronous rung waits for trials other workers run
                // (backing off to 1 s); now and then, take over those of
                // workers that died meanwhile.
                waits += 1;
                std::thread::sleep(std::time::Duration::from_millis((25 * u64::from(waits)).min(1000)));
                if waits % 10 == 0 {
                    self.rerun_orphans(on_trial)?;
                }
                continue;
            };
            waits = 0;
            self.version = started.state_version;
            let (arch, budget) = asked.expect("a started trial was asked");
            let ev = self.evaluate_and_tell(started.trial_id, started.number, &arch, budget)?;
            on_trial(&ev);
        }
        Ok(())
    }

    fn evaluate_and_tell(&mut self, trial: i64, number: u64, arch: &Architecture, budget: Option<u64>) -> Result<TrialEvent> {
        let mut reporter = StoreReporter { store: self.store.as_mut(), trial, error: None };
        let mut ctx = TrialContext {
            number,
            seed: trial_seed(self.record.seed, number),
            checkpoint_dir: self.checkpoint_root.as_ref().map(|r| r.join(format!("trial-{number}"))),
            reporter: &mut reporter,
            budget,
        };
        let result = self.task.evaluate(arch, &mut ctx);
        if let Some(e) = reporter.error {
            anyhow::bail!("trial {number}: recording an intermediate value failed: {e}");
        }
        let direction = self.record.direction;
        // Below the strategy's largest budget a trial pauses, to be resumed or pruned.
        let done = match (budget, self.strategy.max_budget()) {
            (Some(b), Some(max)) => b >= max,
            _ => true,
        };
        let (finish, outcome) = match result {
            Ok(ev) if ev.value.is_finite() => (
                Finish {
                    state: if done { TrialState::Complete } else { TrialState::Paused },
                    value: Some(ev.value),
                    metrics: ev.metrics,
                    cost: ev.cost,
                    error: None,
                },
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
        let mut pruned = 0;
        self.version = self.store.tell(self.record.id, trial, self.version, &finish, &mut |stored| {
            if let Some(bytes) = stored {
                strategy.load_state(bytes)?;
            }
            let prune = strategy.tell_job(number, arch, budget, outcome)?;
            pruned = prune.len();
            Ok((strategy.save_state()?, prune))
        })?;
        Ok(TrialEvent { number, state: finish.state, value: finish.value, budget, resumed: false, pruned })
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
