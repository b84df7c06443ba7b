//! Study storage: the [`Storage`] trait and its embedded SQLite backend.
//!
//! A study store records the study (its resolved config, seed, version and
//! direction), every trial (state, architecture, value, metrics, intermediate
//! values with their step, times, error text) and the strategy's state.
//!
//! Asking and telling are single transactions that also carry the strategy's
//! state, so after a crash at any moment the store holds a strategy state that
//! matches its trials exactly. Several processes may share one study: each
//! transaction hands the callback the stored strategy state whenever another
//! writer has changed it since this process last saw it.
//!
//! Storage is chosen by URL: a path or `sqlite://PATH` opens SQLite.

pub mod sqlite;
pub mod conformance;

use std::collections::BTreeMap;

use archsearch_core::{Direction, TrialState};
use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStorage;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("study store {path}: {source}")]
    Sqlite { path: String, source: rusqlite::Error },
    #[error("study `{0}` not found")]
    NoStudy(String),
    #[error("trial {0} not found")]
    NoTrial(i64),
    #[error("trial (id {0}) is not running: finished trials are immutable, paused ones must be resumed first")]
    Finished(i64),
    #[error("trial {0} is not paused, so it cannot be {1}")]
    NotPaused(u64, &'static str),
    #[error("unsupported storage URL `{0}` (use a path or sqlite://PATH)")]
    Url(String),
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Callback(Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T> = std::result::Result<T, StoreError>;
/// Errors a callback run inside a transaction may return.
pub type CallbackError = Box<dyn std::error::Error + Send + Sync>;

/// What a new study records.
#[derive(Debug, Clone, PartialEq)]
pub struct NewStudy {
    pub name: String,
    /// The resolved config, as TOML.
    pub config: String,
    pub seed: u64,
    pub direction: Direction,
}

/// A stored study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRecord {
    pub id: i64,
    pub name: String,
    pub config: String,
    pub seed: u64,
    pub direction: Direction,
    /// archsearch version that created the study.
    pub version: String,
    /// Unix seconds.
    pub created_at: f64,
    pub counts: Counts,
}

/// Running totals of a study, kept in the study row so they cost O(1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Trials ever started (the next trial's number).
    pub started: u64,
    /// Trials finished (COMPLETE, FAIL or PRUNED).
    pub finished: u64,
    /// Total cost of finished trials, in (simulated) seconds.
    pub cost: f64,
}

/// A trial to start.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTrial {
    /// Canonical string of the architecture.
    pub arch: String,
    /// The architecture as JSON (choices and hyperparameters).
    pub arch_json: String,
    /// Seed the evaluation of this trial uses.
    pub seed: u64,
    /// The budget (step, e.g. epoch) the trial is evaluated up to; `None`:
    /// the task's full evaluation.
    pub step: Option<u64>,
}

/// What an ask starts: a new trial, or a paused one again.
#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    New(NewTrial),
    /// Resume the PAUSED trial `number` up to budget `step`.
    Resume { number: u64, step: u64 },
}

/// How a trial's evaluation ended: COMPLETE, FAIL, or PAUSED (evaluated to a
/// budget below the strategy's largest; it may be resumed or pruned later).
/// `cost` is the cost of this evaluation, added to the trial's.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub state: TrialState,
    pub value: Option<f64>,
    pub metrics: BTreeMap<String, f64>,
    pub cost: f64,
    pub error: Option<String>,
}

/// A stored trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub id: i64,
    pub number: u64,
    pub state: TrialState,
    pub arch: String,
    pub arch_json: String,
    pub seed: u64,
    pub value: Option<f64>,
    pub metrics: BTreeMap<String, f64>,
    pub cost: f64,
    pub error: Option<String>,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub owner: String,
    pub attempts: u32,
    /// The budget (step) the trial runs to, or reached: for a PRUNED trial,
    /// the step at which it stopped. `None`: the task's full evaluation.
    pub step: Option<u64>,
    /// Intermediate values as `(step, value)`, by step.
    pub intermediate: Vec<(u64, f64)>,
}

/// One member of a population at one step (population-based training),
/// its record as JSON (architecture, hyperparameters, fitness, lineage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub step: u64,
    pub member: u64,
    pub record: serde_json::Value,
}

/// A trial started by [`Storage::ask`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Started {
    pub trial_id: i64,
    pub number: u64,
    pub state_version: u64,
}

/// The callback of [`Storage::ask`]: given the stored strategy state if it
/// changed since `known_version`, and the study's counts, returns the new
/// strategy state and the trial to start (or resume), or `None` to start
/// nothing.
pub type AskFn<'a> = dyn FnMut(Option<&[u8]>, &Counts) -> std::result::Result<Option<(Vec<u8>, Launch)>, CallbackError> + 'a;
/// The callback of [`Storage::tell`]: given the stored strategy state if it
/// changed since `known_version`, returns the new strategy state and the
/// numbers of PAUSED trials to prune.
pub type TellFn<'a> = dyn FnMut(Option<&[u8]>) -> std::result::Result<(Vec<u8>, Vec<u64>), CallbackError> + 'a;

/// A study store. One conformance suite ([`conformance`]) runs against every
/// backend.
pub trait Storage: Send {
    /// Creates the study, or loads it if one of that name exists (then
    /// `created` is false and the stored config is returned untouched).
    fn open_study(&mut self, new: &NewStudy) -> Result<(StudyRecord, bool)>;
    /// A study by name.
    fn study(&self, name: &str) -> Result<StudyRecord>;
    /// All studies in the store.
    fn studies(&self) -> Result<Vec<StudyRecord>>;
    /// In one transaction: runs `f` and, if it returns a trial, starts it
    /// (RUNNING, owned by `owner`; a resumed trial must be PAUSED) and stores
    /// the new strategy state.
    fn ask(&mut self, study: i64, known_version: u64, owner: &str, f: &mut AskFn<'_>) -> Result<Option<Started>>;
    /// In one transaction: finishes (or pauses) a RUNNING trial, adds the
    /// evaluation's cost, prunes the PAUSED trials `f` names (each keeps its
    /// step and last value) and stores the strategy state `f` returns.
    /// Returns the new state version.
    fn tell(&mut self, study: i64, trial: i64, known_version: u64, finish: &Finish, f: &mut TellFn<'_>) -> Result<u64>;
    /// Prunes every PAUSED trial of the study (the end of a multi-fidelity
    /// search), unless a trial of the study is still RUNNING (then the last
    /// runner to finish does it); returns how many.
    fn prune_paused(&mut self, study: i64) -> Result<u64>;
    /// Records an intermediate value of a RUNNING trial (and its heartbeat).
    fn report(&mut self, trial: i64, step: u64, value: f64) -> Result<()>;
    /// Every trial of the study, by number.
    fn trials(&self, study: i64) -> Result<Vec<TrialRecord>>;
    /// The stored strategy state and its version.
    fn strategy_state(&self, study: i64) -> Result<Option<(u64, Vec<u8>)>>;
    /// In one transaction: records every member of a population at `step`
    /// (replacing a record of the same step and member) and stores the
    /// strategy state.
    fn record_step(&mut self, study: i64, step: u64, members: &[(u64, String)], state: &[u8]) -> Result<()>;
    /// Every member record of the study, by step and member.
    fn members(&self, study: i64) -> Result<Vec<MemberRecord>>;
    /// Sets a study attribute (a JSON value under a key; replaces the old one).
    fn set_attr(&mut self, study: i64, key: &str, value: &str) -> Result<()>;
    /// Every attribute of the study, by key.
    fn attrs(&self, study: i64) -> Result<BTreeMap<String, serde_json::Value>>;
    /// Takes over RUNNING trials whose owner is gone (a dead process on this
    /// host, or no heartbeat for `stale_after` seconds from another host) and
    /// returns them, now owned by `owner`, to be run again.
    fn claim_orphans(&mut self, study: i64, owner: &str, stale_after: f64) -> Result<Vec<TrialRecord>>;
}

/// Opens a store by URL: a path, or `sqlite://PATH`.
pub fn open(url: &str) -> Result<Box<dyn Storage>> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        return Ok(Box::new(SqliteStorage::open(rest)?));
    }
    if url.contains("://") {
        return Err(StoreError::Url(url.to_string()));
    }
    Ok(Box::new(SqliteStorage::open(url)?))
}

/// Unix time in seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// This host's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// Owners of this process that are still running (see [`owner_id`]).
static LIVE_OWNERS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// An owner id for this process: `host:pid:token`, the token telling apart
/// runners in one process. It counts as alive until [`release_owner`].
pub fn owner_id(token: u64) -> String {
    let id = format!("{}:{}:{token:x}", hostname(), std::process::id());
    LIVE_OWNERS.lock().unwrap_or_else(|e| e.into_inner()).push(id.clone());
    id
}

/// Marks an owner of this process as finished.
pub fn release_owner(owner: &str) {
    LIVE_OWNERS.lock().unwrap_or_else(|e| e.into_inner()).retain(|o| o != owner);
}

/// Whether the process named by an owner id could still be running.
pub fn owner_alive(owner: &str, me: &str, heartbeat_age: f64, stale_after: f64) -> bool {
    if owner == me {
        return true;
    }
    let mut parts = owner.rsplitn(3, ':');
    let (_token, pid, host) = (parts.next(), parts.next(), parts.next());
    let Some(pid) = pid.and_then(|p| p.parse::<i32>().ok()) else { return heartbeat_age < stale_after };
    if host != Some(hostname().as_str()) {
        return heartbeat_age < stale_after;
    }
    if pid as u32 == std::process::id() {
        // Same process: alive while that runner has not finished.
        return LIVE_OWNERS.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|o| o == owner);
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
