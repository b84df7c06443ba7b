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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use archsearch_core::{Architecture, Direction, Job, Outcome, Space, Strategy, TrialState};
use archsearch_store::{
    Finish, Launch, NewStudy, NewTrial, StateLog, StateSince, StateWrite, Storage, StoreError, StudyRecord, TrialRecord,
};
use archsearch_tasks::{Artifacts, CheckpointSlot, Reporter, SharedSlot, Task, TrialContext};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use archsearch_train::DeviceChoice;

/// A running trial's intermediate values go straight to the store.
struct StoreReporter<'a> {
    store: &'a mut dyn Storage,
    trial: i64,
    owner: &'a str,
    error: Option<StoreError>,
    /// Set by the heartbeat thread when another runner took the trial over.
    lost: &'a AtomicBool,
}

impl Reporter for StoreReporter<'_> {
    fn report(&mut self, step: u64, value: f64) {
        if self.error.is_none() {
            if let Err(e) = self.store.report(self.trial, self.owner, step, value) {
                self.error = Some(e);
            }
        }
    }

    fn cancelled(&self) -> bool {
        matches!(self.error, Some(StoreError::NotOwner { .. })) || self.lost.load(Ordering::Relaxed)
    }
}

/// One operation on a strategy, as the state log records it: replaying the
/// log on the last snapshot rebuilds the strategy's state exactly, since a
/// strategy's asks and tells are deterministic given its state.
#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Ask { next: u64 },
    Tell { trial: u64, arch: Architecture, budget: Option<u64>, outcome: LoggedOutcome },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum LoggedOutcome {
    Complete(f64),
    Pruned(Option<f64>),
    Failed,
}

impl From<Outcome> for LoggedOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Complete { value } => LoggedOutcome::Complete(value),
            Outcome::Pruned { value } => LoggedOutcome::Pruned(value),
            Outcome::Failed => LoggedOutcome::Failed,
        }
    }
}

impl From<LoggedOutcome> for Outcome {
    fn from(o: LoggedOutcome) -> Self {
        match o {
            LoggedOutcome::Complete(value) => Outcome::Complete { value },
            LoggedOutcome::Pruned(value) => Outcome::Pruned { value },
            LoggedOutcome::Failed => Outcome::Failed,
        }
    }
}

/// Applies one logged operation to a strategy.
fn apply(strategy: &mut dyn Strategy, entry: &[u8]) -> Result<(), archsearch_store::CallbackError> {
    match serde_json::from_slice::<Op>(entry)? {
        Op::Ask { next } => {
            strategy.ask_job(next)?;
        }
        Op::Tell { trial, arch, budget, outcome } => {
            strategy.tell_job(trial, &arch, budget, outcome.into())?;
        }
    }
    Ok(())
}

/// Brings a strategy up to date with what the store says changed.
fn catch_up(
    strategy: &mut Box<dyn Strategy>,
    build: &dyn Fn() -> Result<Box<dyn Strategy>>,
    log: &StateLog,
) -> Result<(), archsearch_store::CallbackError> {
    let entries = match &log.since {
        StateSince::Current => return Ok(()),
        StateSince::Entries(e) => e,
        StateSince::Snapshot(snapshot, e) => {
            if snapshot.is_empty() {
                *strategy = build().map_err(|e| format!("{e:#}"))?;
            } else {
                strategy.load_state(snapshot)?;
            }
            e
        }
    };
    for e in entries {
        apply(strategy.as_mut(), e)?;
    }
    Ok(())
}

/// What a transaction writes after `op`: the op as a log entry, or the whole
/// state once the log has outgrown the last snapshot.
fn state_write(strategy: &dyn Strategy, log: &StateLog, op: &Op) -> Result<StateWrite, archsearch_store::CallbackError> {
    let entry = serde_json::to_vec(op)?;
    if log.wants_snapshot(entry.len()) {
        Ok(StateWrite::snapshot(strategy.save_state()?))
    } else {
        Ok(StateWrite { entry, ..Default::default() })
    }
}

/// The trial a runner is evaluating, for its heartbeat thread.
#[derive(Default)]
pub(crate) struct Beat {
    current: Mutex<Option<(i64, Instant)>>,
    pub(crate) stop: AtomicBool,
    /// The current trial was taken over by another runner.
    lost: AtomicBool,
}

impl Beat {
    pub(crate) fn set(&self, trial: Option<i64>) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current = trial.map(|t| (t, Instant::now()));
        self.lost.store(false, Ordering::Relaxed);
    }

    /// Whether the current trial was taken over by another runner.
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Beats for the current trial every `every` until stopped, on its own
    /// connection, so that a trial's owner looks alive however long its
    /// epochs are (and records what the attempt has cost so far).
    pub(crate) fn run(&self, mut store: Box<dyn Storage>, owner: &str, every: Duration) {
        let mut last = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(every));
            if last.elapsed() < every {
                continue;
            }
            last = Instant::now();
            let current = *self.current.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((trial, since)) = current {
                match store.heartbeat(trial, owner, since.elapsed().as_secs_f64()) {
                    Ok(true) => {}
                    Ok(false) => {
                        // Only if the runner is still on that very evaluation
                        // (it may have told it and moved on while this beat ran).
                        let still = self.current.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|c| c == (trial, since));
                        if still && !self.lost.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                trial_id = trial,
                                "this runner no longer owns the trial it evaluates (taken over after a stale heartbeat); stopping it"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(trial_id = trial, error = %e, "heartbeat failed"),
                }
            }
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
    /// The config the study runs with (the stored one when resuming, with
    /// the file's budget and execution settings).
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
    /// Where checkpoints are shared with other workers, if anywhere.
    artifacts: Option<Arc<dyn Artifacts>>,
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
    /// Opens (or creates) the study of `config` in `store`. Everything is
    /// built and checked first (space, task and its data, strategy, budget
    /// ladder), so a config error never writes a study row. An existing
    /// study must have been created with the same config, except for its
    /// budget (a larger `trials` or `cost` extends it) and execution
    /// settings (`workers`, `device`); otherwise this is an error that lists
    /// the fields that differ.
    pub fn open(config: &Config, store: Box<dyn Storage>, device: Option<DeviceChoice>) -> Result<Self> {
        Self::open_with(config, store, &|c| c.task(device))
    }

    /// [`Study::open`] with the task built by `make_task` from the config
    /// the study runs with.
    pub fn open_with(config: &Config, mut store: Box<dyn Storage>, make_task: &dyn Fn(&Config) -> Result<Arc<dyn Task>>) -> Result<Self> {
        let existing = match store.study(config.name()) {
            Ok(r) => Some(r),
            Err(StoreError::NoStudy(_)) => None,
            Err(e) => return Err(e.into()),
        };
        // The config an existing study runs with: its stored one, with the
        // file's budget and execution settings (any other difference is an error).
        let reconciled = |rec: &StudyRecord| -> Result<Config> {
            let stored: Config = toml::from_str(&rec.config).with_context(|| format!("stored config of study `{}`", rec.name))?;
            crate::config::reconcile(&stored, config).with_context(|| format!("study `{}` exists", rec.name))
        };
        let run_config = match &existing {
            None => config.clone(),
            Some(rec) => reconciled(rec)?,
        };
        let space = run_config.space()?;
        let task = make_task(&run_config)?;
        if run_config.study.cost.is_some() && run_config.study.trials.is_none() && !task.charges_cost() {
            anyhow::bail!(
                "[study] cost = {} is a budget this task never spends: it charges nothing per evaluation \
                 (set `cost_per_query`, `cost_per_step` or `cost_column`, or budget in `trials`)",
                run_config.study.cost.unwrap_or(0.0)
            );
        }
        let build = {
            let (s, sp) = (run_config.strategy.clone(), space.clone());
            move |seed: u64| s.build(&sp, seed)
        };
        let ladder = run_config.strategy.budgets(&space)?;
        for &b in &ladder {
            task.check_budget(b)
                .with_context(|| format!("[strategy] `{}` asks for budget {b} (its ladder: {ladder:?})", run_config.strategy.name()))?;
        }
        // The seed defines the study, so the stored one is this one.
        let mut strategy = build(run_config.study.seed)?;
        // Everything checked: now the study may be written.
        let new = NewStudy {
            name: config.name().to_string(),
            config: run_config.to_toml(),
            seed: run_config.study.seed,
            direction: run_config.study.direction,
        };
        let (record, created) = store.open_study(&new)?;
        if !created && record.config != new.config {
            // Another process may have created the study since we looked.
            if existing.is_none() {
                reconciled(&record)?;
            }
            // Only the budget and execution settings differ (`reconcile`).
            store.set_config(record.id, &new.config)?;
            tracing::info!(study = %record.name, trials = ?run_config.study.trials, cost = ?run_config.study.cost, "the study's budget or execution settings changed");
        }
        let (version, log) = store.strategy_state(record.id, 0)?;
        catch_up(&mut strategy, &|| build(record.seed), &log).map_err(|e| anyhow::anyhow!("stored strategy state: {e}"))?;
        let budget = Budget { trials: run_config.study.trials, cost: run_config.study.cost };
        Ok(Study {
            store,
            record,
            config: run_config,
            space,
            task,
            strategy,
            budget,
            owner: archsearch_store::owner_id(rand::random()),
            version,
            checkpoint_root: None,
            artifacts: None,
        })
    }

    /// Another runner of the same study on its own store connection, sharing
    /// this one's task (and so its data): a worker of a pool.
    pub fn worker(&self, store: Box<dyn Storage>) -> Result<Study> {
        let mut strategy = self.build_strategy()?;
        let (version, log) = store.strategy_state(self.record.id, 0)?;
        catch_up(&mut strategy, &|| self.build_strategy(), &log).map_err(|e| anyhow::anyhow!("stored strategy state: {e}"))?;
        Ok(Study {
            store,
            record: self.record.clone(),
            config: self.config.clone(),
            space: self.space.clone(),
            task: self.task.clone(),
            strategy,
            budget: self.budget,
            owner: archsearch_store::owner_id(rand::random()),
            version,
            checkpoint_root: self.checkpoint_root.clone(),
            artifacts: self.artifacts.clone(),
        })
    }

    fn build_strategy(&self) -> Result<Box<dyn Strategy>> {
        self.config.strategy.build(&self.space, self.record.seed)
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
        let mut others = (1..workers).map(|_| self.worker(connect()?)).collect::<Result<Vec<_>>>()?;
        // A worker that fails stops the others (which may wait on its trial).
        let abort = AtomicBool::new(false);
        let abort = &abort;
        std::thread::scope(|scope| {
            let handles: Vec<_> = others.iter_mut().map(|w| scope.spawn(move || w.run_loop(on_trial, abort, false))).collect();
            let mine = self.run_loop(on_trial, abort, true);
            let mut result = mine;
            for h in handles {
                let r = h.join().map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
                result = result.and(r);
            }
            result
        })?;
        self.finish()
    }

    /// Lets trials checkpoint under `dir` (`dir/trial-N/`; see
    /// [`checkpoint_dir`]), so a trial killed mid-training resumes from its
    /// last checkpoint.
    pub fn with_checkpoints(mut self, dir: std::path::PathBuf) -> Self {
        self.checkpoint_root = Some(dir);
        self
    }

    /// Shares trials' checkpoints through `store` (see [`shared_key`]):
    /// each checkpoint written is pushed there, and a trial resumed (a
    /// promotion, or a takeover after a crash) first pulls it, so a worker
    /// on any machine continues from what another one wrote. Needs a local
    /// checkpoint folder ([`Study::with_checkpoints`]) as the cache.
    pub fn with_artifacts(mut self, store: Arc<dyn Artifacts>) -> Self {
        self.artifacts = Some(store);
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
        self.run_loop(on_trial, &AtomicBool::new(false), true)?;
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

    /// Claims the trials whose runner died (or stopped beating) and runs them
    /// again in place, except those that crashed their process
    /// `crash_limit` times already: those fail.
    fn rerun_orphans(&mut self, on_trial: &(dyn Fn(&TrialEvent) + Sync), beat: &Beat) -> Result<()> {
        let limit = self.config.study.crash_limit;
        for t in self.store.claim_orphans(self.record.id, &self.owner, self.config.study.stale_after)? {
            let arch: Architecture = serde_json::from_str(&t.arch_json).with_context(|| format!("trial {}", t.number))?;
            let crashes = t.crashes;
            let ev = if crashes >= limit {
                tracing::warn!(trial = t.number, crashes, "a trial crashed its process too often; failing it");
                let finish = Finish {
                    state: TrialState::Fail,
                    value: None,
                    metrics: Default::default(),
                    cost: 0.0,
                    error: Some(format!("crashed {crashes} times (`[study] crash_limit` = {limit})")),
                };
                self.tell(t.id, t.number, &arch, t.step, finish, Outcome::Failed)?
            } else {
                tracing::info!(trial = t.number, attempt = t.attempts, "re-running a trial left unfinished");
                self.evaluate_and_tell(t.id, t.number, &arch, t.step, beat)?
            };
            if let Some(ev) = ev {
                on_trial(&TrialEvent { resumed: true, ..ev });
            }
        }
        Ok(())
    }

    fn run_loop(&mut self, on_trial: &(dyn Fn(&TrialEvent) + Sync), abort: &AtomicBool, claim_first: bool) -> Result<()> {
        let beat = Beat::default();
        let every = Duration::from_secs_f64((self.config.study.stale_after / 5.0).clamp(0.05, 30.0));
        let connection = self.store.connect_again()?;
        let owner = self.owner.clone();
        let result = std::thread::scope(|scope| {
            if let Some(store) = connection {
                let (beat, owner) = (&beat, &owner);
                scope.spawn(move || beat.run(store, owner, every));
            }
            let result =
                if claim_first { self.rerun_orphans(on_trial, &beat) } else { Ok(()) }.and_then(|_| self.run_jobs(on_trial, abort, &beat));
            beat.stop.store(true, Ordering::Relaxed);
            result
        });
        if result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        result
    }

    fn run_jobs(&mut self, on_trial: &(dyn Fn(&TrialEvent) + Sync), abort: &AtomicBool, beat: &Beat) -> Result<()> {
        archsearch_rl::init_thread(1);
        let mut waits = 0u32;
        loop {
            if abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            let mut asked = None;
            let mut wait = false;
            let mut seen = self.version;
            let budget = self.budget;
            let (space, strategy, seed) = (&self.space, &mut self.strategy, self.record.seed);
            let (config, store) = (&self.config, &mut self.store);
            let build = || config.strategy.build(space, seed);
            let started = store.ask(self.record.id, self.version, &self.owner, &mut |log, counts| {
                catch_up(strategy, &build, log)?;
                seen = log.version;
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
                        asked = Some((Some(arch), budget));
                        Launch::New(trial)
                    }
                    Job::Resume { trial, budget } => {
                        asked = Some((None, Some(budget)));
                        Launch::Resume { number: trial, step: budget }
                    }
                };
                Ok(Some((state_write(strategy.as_ref(), log, &Op::Ask { next: counts.started })?, launch)))
            });
            let started = match started {
                // Another process ended the study and pruned the trial this
                // strategy (in a state it had not yet seen) wanted to resume.
                Err(StoreError::NotPaused(n, _)) => {
                    tracing::info!(trial = n, "the study was finished by another runner");
                    break;
                }
                other => other?,
            };
            let Some(started) = started else {
                // Nothing written, but this runner's strategy caught up.
                self.version = seen;
                if !wait {
                    break;
                }
                // A synchronous rung waits for trials other workers run
                // (backing off to 1 s); now and then, take over those of
                // workers that died meanwhile.
                waits += 1;
                std::thread::sleep(Duration::from_millis((25 * u64::from(waits)).min(1000)));
                if waits.is_multiple_of(10) {
                    self.rerun_orphans(on_trial, beat)?;
                }
                continue;
            };
            waits = 0;
            self.version = started.state_version;
            let (arch, budget) = asked.expect("a started trial was asked");
            // A resumed trial's architecture is the stored one.
            let arch = match arch {
                Some(a) => a,
                None => {
                    let t = self.store.trial(self.record.id, started.number)?;
                    serde_json::from_str(&t.arch_json).with_context(|| format!("trial {}", t.number))?
                }
            };
            if let Some(ev) = self.evaluate_and_tell(started.trial_id, started.number, &arch, budget, beat)? {
                on_trial(&ev);
            }
        }
        Ok(())
    }

    /// Evaluates a trial this runner owns and tells its outcome. A panic in
    /// the task fails the trial with its message; a failed trial is charged
    /// what it consumed. `None`: the trial was taken over by another runner
    /// meanwhile, and its result is dropped.
    fn evaluate_and_tell(
        &mut self,
        trial: i64,
        number: u64,
        arch: &Architecture,
        budget: Option<u64>,
        beat: &Beat,
    ) -> Result<Option<TrialEvent>> {
        let checkpoint = self.checkpoint_root.as_ref().map(|root| CheckpointSlot {
            dir: root.join(format!("trial-{number}")),
            study: self.record.uid.clone(),
            owner: format!("trial-{number}"),
            runner: self.owner.clone(),
            shared: self
                .artifacts
                .as_ref()
                .map(|store| SharedSlot { store: store.clone(), key: shared_key(&self.record, &format!("trial-{number}")) }),
        });
        let mut reporter = StoreReporter { store: self.store.as_mut(), trial, owner: &self.owner, error: None, lost: &beat.lost };
        let mut ctx = TrialContext { number, seed: trial_seed(self.record.seed, number), checkpoint, reporter: &mut reporter, budget };
        beat.set(Some(trial));
        let start = Instant::now();
        let task = &self.task;
        let result = catch_unwind(AssertUnwindSafe(|| task.evaluate(arch, &mut ctx)));
        let seconds = start.elapsed().as_secs_f64();
        beat.set(None);
        match reporter.error {
            Some(StoreError::NotOwner { owner, .. }) => {
                tracing::warn!(trial = number, %owner, "another runner took this trial over; dropping this evaluation");
                return Ok(None);
            }
            Some(e) => anyhow::bail!("trial {number}: recording an intermediate value failed: {e}"),
            None => {}
        }
        let direction = self.record.direction;
        // Below the strategy's largest budget a trial pauses, to be resumed or pruned.
        let done = match (budget, self.strategy.max_budget()) {
            (Some(b), Some(max)) => b >= max,
            _ => true,
        };
        let failed = |error: String, metrics, cost| {
            (Finish { state: TrialState::Fail, value: None, metrics, cost, error: Some(error) }, Outcome::Failed)
        };
        let (finish, outcome) = match result {
            Ok(Ok(ev)) if ev.value.is_finite() => (
                Finish {
                    state: if done { TrialState::Complete } else { TrialState::Paused },
                    value: Some(ev.value),
                    metrics: ev.metrics,
                    cost: ev.cost,
                    error: None,
                },
                Outcome::Complete { value: direction.fitness(ev.value) },
            ),
            Ok(Ok(ev)) => failed(format!("the objective `{}` is {}", self.task.objective(), ev.value), ev.metrics, ev.cost),
            Ok(Err(e)) => failed(e.to_string(), Default::default(), self.task.failure_cost(arch, budget, seconds)),
            Err(panic) => failed(
                format!("the evaluation panicked: {}", crate::panic_message(panic.as_ref())),
                Default::default(),
                self.task.failure_cost(arch, budget, seconds),
            ),
        };
        if let Some(e) = &finish.error {
            tracing::warn!(trial = number, error = %e, "trial failed");
        }
        self.tell(trial, number, arch, budget, finish, outcome)
    }

    /// Tells the store and the strategy how a trial ended, in one transaction.
    fn tell(
        &mut self,
        trial: i64,
        number: u64,
        arch: &Architecture,
        budget: Option<u64>,
        finish: Finish,
        outcome: Outcome,
    ) -> Result<Option<TrialEvent>> {
        let (space, strategy, seed, config) = (&self.space, &mut self.strategy, self.record.seed, &self.config);
        let build = || config.strategy.build(space, seed);
        let mut pruned = 0;
        let told = self.store.tell(self.record.id, trial, &self.owner, self.version, &finish, &mut |log| {
            catch_up(strategy, &build, log)?;
            let prune = strategy.tell_job(number, arch, budget, outcome)?;
            pruned = prune.len();
            let op = Op::Tell { trial: number, arch: arch.clone(), budget, outcome: outcome.into() };
            Ok((state_write(strategy.as_ref(), log, &op)?, prune))
        });
        match told {
            Ok(v) => self.version = v,
            Err(StoreError::NotOwner { owner, .. }) => {
                tracing::warn!(trial = number, %owner, "another runner took this trial over; dropping this evaluation");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Some(TrialEvent { number, state: finish.state, value: finish.value, budget, resumed: false, pruned }))
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

/// Where this machine keeps the checkpoints of `study` (`DIR/trial-N/`,
/// `DIR/member-N/`): `PATH.ckpt/STUDY` beside a SQLite store; for a
/// PostgreSQL store, `archsearch-cache/STUDY/UID` in the working folder
/// (each worker's own, and keyed by the study's uid, since two databases may
/// hold studies of one name; `[study] artifacts` shares them); none for an
/// in-memory store.
pub fn checkpoint_dir(url: &str, study: &StudyRecord) -> Option<std::path::PathBuf> {
    if archsearch_store::is_postgres(url) {
        return Some(std::path::Path::new("archsearch-cache").join(&study.name).join(&study.uid));
    }
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    (!path.contains("://") && path != ":memory:").then(|| std::path::PathBuf::from(format!("{path}.ckpt")).join(&study.name))
}

/// The key of `owner`'s checkpoint (`trial-N`, `member-N`) in a study's
/// artifact store: `STUDY/UID/OWNER/checkpoint.safetensors`, so studies of
/// one name (in two databases, or made anew) never overwrite each other's.
pub fn shared_key(study: &StudyRecord, owner: &str) -> String {
    shared_key_of(&study.name, &study.uid, owner)
}

pub(crate) fn shared_key_of(name: &str, uid: &str, owner: &str) -> String {
    format!("{name}/{uid}/{owner}/{}", archsearch_train::checkpoint::FILE)
}

/// The best complete trial of a study, if any.
pub fn best(trials: &[TrialRecord], direction: Direction) -> Option<&TrialRecord> {
    trials.iter().filter(|t| t.state == TrialState::Complete && t.value.is_some()).fold(None, |best: Option<&TrialRecord>, t| match best {
        Some(b) if !direction.better(t.value.unwrap(), b.value.unwrap()) => Some(b),
        _ => Some(t),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use archsearch_tasks::{Evaluation, TaskError};

    /// Scores an architecture by its choices; panics or sleeps on request.
    struct TestTask {
        space: Space,
        panic_on: Option<u64>,
        sleep: Duration,
    }

    impl Task for TestTask {
        fn space(&self) -> &Space {
            &self.space
        }
        fn objective(&self) -> &str {
            "score"
        }
        fn check_budget(&self, _budget: u64) -> Result<(), TaskError> {
            Ok(())
        }
        fn evaluate(&self, arch: &Architecture, ctx: &mut TrialContext<'_>) -> Result<Evaluation, TaskError> {
            if Some(ctx.number) == self.panic_on {
                panic!("boom in trial {}", ctx.number);
            }
            std::thread::sleep(self.sleep);
            let value = arch.choices.iter().enumerate().map(|(i, &c)| (c * (i + 1)) as f64).sum::<f64>() + ctx.budget.unwrap_or(0) as f64;
            Ok(Evaluation { value, metrics: Default::default(), cost: 1.0 })
        }
    }

    fn config(dir: &std::path::Path, extra_study: &str, strategy: &str) -> Config {
        let p = dir.join("t.toml");
        std::fs::write(&p, format!("[study]\nname = \"t\"\n{extra_study}\n[task]\nkind = \"nb201\"\n[strategy]\n{strategy}\n")).unwrap();
        Config::load(&p).unwrap()
    }

    fn open(c: &Config, url: &str, panic_on: Option<u64>, sleep: Duration) -> Study {
        let make = move |c: &Config| -> Result<Arc<dyn Task>> { Ok(Arc::new(TestTask { space: c.space()?, panic_on, sleep })) };
        Study::open_with(c, archsearch_store::open(url).unwrap(), &make).unwrap()
    }

    #[test]
    fn a_panicking_evaluation_fails_its_trial_and_the_study_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("s.db").to_str().unwrap().to_string();
        let c = config(dir.path(), "trials = 5", "kind = \"random\"");
        let mut study = open(&c, &url, Some(1), Duration::ZERO);
        study.run(&|_| {}).unwrap();
        let t = study.store().trials(study.record().id).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t[1].state, TrialState::Fail);
        assert!(t[1].error.as_deref().unwrap().contains("panicked: boom in trial 1"), "{:?}", t[1].error);
        assert!(t.iter().filter(|t| t.number != 1).all(|t| t.state == TrialState::Complete));
    }

    #[test]
    fn a_trial_that_crashed_its_process_three_times_fails() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("s.db").to_str().unwrap().to_string();
        let c = config(dir.path(), "trials = 2", "kind = \"random\"");
        let study = open(&c, &url, None, Duration::ZERO);
        let id = study.record().id;
        drop(study);
        // Trial 0 is started by a process that dies, and claimed (and lost)
        // by two more dead processes: three crashes.
        let host = archsearch_store::machine();
        let dead = |n: u32| format!("{host}:{}@1:1", 999_999_000 + n);
        let mut store = archsearch_store::open(&url).unwrap();
        let launch = Launch::New(NewTrial {
            arch: "a".into(),
            arch_json: serde_json::to_string(&Space::nb201().sample(&mut <archsearch_core::Rng as rand::SeedableRng>::seed_from_u64(0)))
                .unwrap(),
            seed: 1,
            step: None,
        });
        store.ask(id, 0, &dead(0), &mut |_, _| Ok(Some((StateWrite::snapshot(vec![]), launch.clone())))).unwrap();
        for n in 1..3 {
            assert_eq!(store.claim_orphans(id, &dead(n), 60.0).unwrap().len(), 1);
        }
        let mut study = open(&c, &url, None, Duration::ZERO);
        study.run(&|_| {}).unwrap();
        let t = study.store().trials(id).unwrap();
        assert_eq!((t[0].state, t[0].attempts), (TrialState::Fail, 4));
        assert!(t[0].error.as_deref().unwrap().contains("crashed 3 times"), "{:?}", t[0].error);
        assert_eq!(t.len(), 2, "the study went on");
    }

    #[test]
    fn a_slow_trial_keeps_beating_from_its_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("s.db").to_str().unwrap().to_string();
        let c = config(dir.path(), "trials = 1\nstale_after = 0.25", "kind = \"random\"");
        let mut study = open(&c, &url, None, Duration::from_millis(1200));
        let id = study.record().id;
        let probe = std::thread::spawn(move || {
            let store = archsearch_store::open_read_only(&url).unwrap();
            let mut ages = Vec::new();
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(350));
                let t = store.trials(id).unwrap();
                ages.push(archsearch_store::now() - t[0].heartbeat);
            }
            ages
        });
        study.run(&|_| {}).unwrap();
        let ages = probe.join().unwrap();
        assert!(ages.iter().all(|&a| a < 0.25), "heartbeat ages {ages:?} (stale after 0.25 s)");
        assert_eq!(study.store().trials(id).unwrap()[0].attempts, 1);
    }

    /// A study reopened by another process rebuilds its strategy from the
    /// snapshot and log to exactly the state the running process holds.
    #[test]
    fn a_reopened_study_rebuilds_the_same_strategy_state() {
        for strategy in ["kind = \"evolution\"", "kind = \"reinforce-lstm\"", "kind = \"asha\"\nmin_budget = 1\nmax_budget = 9"] {
            let dir = tempfile::tempdir().unwrap();
            let url = dir.path().join("s.db").to_str().unwrap().to_string();
            let c = config(dir.path(), "trials = 120", strategy);
            let mut study = open(&c, &url, None, Duration::ZERO);
            study.run(&|_| {}).unwrap();
            let reopened = open(&c, &url, None, Duration::ZERO);
            assert_eq!(reopened.strategy.save_state().unwrap(), study.strategy.save_state().unwrap(), "{strategy}");
            let (_, log) = study.store().strategy_state(study.record().id, 0).unwrap();
            assert!(log.log_bytes <= log.snapshot_bytes, "{strategy}: the log stays below the snapshot");
        }
    }
}
