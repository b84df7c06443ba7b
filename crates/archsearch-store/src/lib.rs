//! Study storage: the [`Storage`] trait, its embedded SQLite backend and its
//! PostgreSQL backend.
//!
//! A study store records the study (its resolved config, seed, version and
//! direction), every trial (state, architecture, value, metrics, intermediate
//! values with their step, times, error text) and the strategy's state.
//!
//! Asking and telling are single transactions that also carry the strategy's
//! state, so after a crash at any moment the store holds a strategy state that
//! matches its trials exactly. The state is kept as a *snapshot* plus a *log*
//! of the operations since it ([`StateWrite`]): a transaction appends one
//! small log entry, and writes a fresh snapshot (clearing the log) only once
//! the log has grown as large as the snapshot, so the per-trial cost stays
//! flat even for strategies whose state grows with the study. Several
//! processes may share one study: each transaction hands the callback what
//! changed since the version this process last saw ([`StateSince`]).
//!
//! Every trial is owned by one runner (`machine:pid@start:token`): only the
//! owner may report, beat or tell, and a runner whose process is gone (its
//! process id reused or not) or whose heartbeat is stale loses its trials to
//! whoever claims them.
//!
//! Storage is chosen by URL: a path or `sqlite://PATH` opens SQLite (one
//! machine, any number of processes), `postgres://USER@HOST/DB` PostgreSQL
//! (workers on many machines). Opening never writes to a file or database
//! schema that is not an archsearch store. Backends' own error types stay
//! behind [`StoreError::Backend`].

pub mod conformance;
pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;

use archsearch_core::{Direction, TrialState};
use serde::{Deserialize, Serialize};

pub use postgres::PostgresStorage;
pub use sqlite::SqliteStorage;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (SQL error, lost connection, I/O): `store` names
    /// the store (a path, or a URL without its password), `message` says why.
    /// Backends' own error types stay behind this variant.
    #[error("study store {store}: {message}")]
    Backend { store: String, message: String },
    #[error("study `{0}` not found")]
    NoStudy(String),
    #[error("trial {0} not found")]
    NoTrial(i64),
    #[error("trial (id {0}) is not running: finished trials are immutable, paused ones must be resumed first")]
    Finished(i64),
    #[error("trial (id {trial}) is no longer owned by this runner (now owned by `{owner}`): it was taken over after a stale heartbeat")]
    NotOwner { trial: i64, owner: String },
    #[error("{0}: the store was opened read-only")]
    ReadOnly(String),
    #[error("{path} is not an archsearch study store: {reason}; it was left untouched")]
    Foreign { path: String, reason: String },
    #[error("trial {0} is not paused, so it cannot be {1}")]
    NotPaused(u64, &'static str),
    #[error("unsupported storage URL `{0}` (use a path, sqlite://PATH or postgres://USER@HOST/DB)")]
    Url(String),
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Callback(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// A backend's error, for the store named `store`.
    /// The message is the error and its causes, each said once.
    pub fn backend(store: &str, error: impl std::error::Error) -> Self {
        let mut message = error.to_string();
        let mut cause = error.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            cause = c.source();
        }
        StoreError::Backend { store: store.to_string(), message }
    }
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
    /// A random id made when the study is created: checkpoints carry it, so
    /// a new study of the same name never takes an old study's weights.
    pub uid: String,
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
    /// Total cost spent, in (simulated) seconds: every told evaluation, and
    /// every attempt a crash cut short (the sum of the trials' costs).
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
    Resume {
        number: u64,
        step: u64,
    },
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
    /// Metrics by name; NaN and infinities are kept (written as strings).
    #[serde(with = "metrics")]
    pub metrics: BTreeMap<String, f64>,
    pub cost: f64,
    pub error: Option<String>,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub owner: String,
    /// Unix seconds of the owner's last heartbeat.
    pub heartbeat: f64,
    pub attempts: u32,
    /// Attempts that ended with their process dying (not released).
    pub crashes: u32,
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

/// What changed in a study's strategy state since the version a caller knows.
#[derive(Debug, Clone, PartialEq)]
pub enum StateSince {
    /// Nothing: the caller's state is current.
    Current,
    /// Log entries to apply, oldest first, on top of the caller's state.
    Entries(Vec<Vec<u8>>),
    /// A snapshot newer than the caller's state (restore it), then entries.
    /// An empty snapshot means "the initial state".
    Snapshot(Vec<u8>, Vec<Vec<u8>>),
}

/// The stored strategy state as a callback sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateLog {
    /// The stored state's version (the caller is at it once it applied `since`).
    pub version: u64,
    pub since: StateSince,
    /// Bytes of log entries written since the last snapshot.
    pub log_bytes: u64,
    /// Size of the last snapshot.
    pub snapshot_bytes: u64,
}

impl StateLog {
    /// Whether a transaction writing `entry` should write a snapshot instead:
    /// once the log would outgrow the snapshot, so that writes stay
    /// proportional to the entries and replays to the snapshot.
    pub fn wants_snapshot(&self, entry: usize) -> bool {
        self.log_bytes + entry as u64 >= self.snapshot_bytes
    }
}

/// What a transaction writes to the strategy state: one log entry, or (when
/// `snapshot` is set) a whole new state that replaces the snapshot and the
/// log; and population records to store with it, `(step, member, record
/// JSON)` (replacing a record of the same step and member), so that a
/// population step and the state after it are written in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateWrite {
    pub entry: Vec<u8>,
    pub snapshot: Option<Vec<u8>>,
    pub members: Vec<(u64, u64, String)>,
}

impl StateWrite {
    /// A whole state (the snapshot form).
    pub fn snapshot(state: Vec<u8>) -> Self {
        StateWrite { snapshot: Some(state), ..Default::default() }
    }
}

/// A trial started by [`Storage::ask`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Started {
    pub trial_id: i64,
    pub number: u64,
    pub state_version: u64,
}

/// The callback of [`Storage::ask`]: given what changed in the strategy
/// state since `known_version` and the study's counts, returns what to write
/// to the state and the trial to start (or resume), or `None` to start
/// nothing (and write nothing).
pub type AskFn<'a> = dyn FnMut(&StateLog, &Counts) -> std::result::Result<Option<(StateWrite, Launch)>, CallbackError> + 'a;
/// The callback of [`Storage::tell`]: given what changed in the strategy
/// state since `known_version`, returns what to write to the state and the
/// numbers of PAUSED trials to prune.
pub type TellFn<'a> = dyn FnMut(&StateLog) -> std::result::Result<(StateWrite, Vec<u64>), CallbackError> + 'a;

/// A study store. One conformance suite ([`conformance`]) runs against every
/// backend.
pub trait Storage: Send {
    /// Creates the study, or loads it if one of that name exists (then
    /// `created` is false and the stored config is returned untouched).
    fn open_study(&mut self, new: &NewStudy) -> Result<(StudyRecord, bool)>;
    /// Replaces a study's stored config (a study extended to a larger budget).
    fn set_config(&mut self, study: i64, config: &str) -> Result<()>;
    /// A study by name.
    fn study(&self, name: &str) -> Result<StudyRecord>;
    /// All studies in the store.
    fn studies(&self) -> Result<Vec<StudyRecord>>;
    /// In one transaction: runs `f` and, if it returns a trial, starts it
    /// (RUNNING, owned by `owner`; a resumed trial must be PAUSED) and stores
    /// the new strategy state.
    fn ask(&mut self, study: i64, known_version: u64, owner: &str, f: &mut AskFn<'_>) -> Result<Option<Started>>;
    /// In one transaction: finishes (or pauses) a RUNNING trial that `owner`
    /// owns, adds the evaluation's cost, prunes the PAUSED trials `f` names
    /// (each keeps its step and last value) and stores the strategy state `f`
    /// returns. Returns the new state version.
    fn tell(&mut self, study: i64, trial: i64, owner: &str, known_version: u64, finish: &Finish, f: &mut TellFn<'_>) -> Result<u64>;
    /// Prunes every PAUSED trial of the study (the end of a multi-fidelity
    /// search), unless a trial of the study is still RUNNING (then the last
    /// runner to finish does it); returns how many.
    fn prune_paused(&mut self, study: i64) -> Result<u64>;
    /// Records an intermediate value of a RUNNING trial that `owner` owns
    /// (and its heartbeat).
    fn report(&mut self, trial: i64, owner: &str, step: u64, value: f64) -> Result<()>;
    /// The heartbeat of a RUNNING trial that `owner` owns, with the cost its
    /// current attempt has spent so far (charged to the trial if the attempt
    /// dies). `Ok(false)`: the trial is no longer running or no longer owned.
    fn heartbeat(&mut self, trial: i64, owner: &str, attempt_cost: f64) -> Result<bool>;
    /// Every trial of the study, by number.
    fn trials(&self, study: i64) -> Result<Vec<TrialRecord>>;
    /// One trial by number (without its intermediate values).
    fn trial(&self, study: i64, number: u64) -> Result<TrialRecord>;
    /// The strategy state: its version and what changed since `known_version`.
    fn strategy_state(&self, study: i64, known_version: u64) -> Result<(u64, StateLog)>;
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
    /// host, or no heartbeat for `stale_after` seconds) and returns them, now
    /// owned by `owner`, to be run again: each attempt counts, and the cost
    /// the dead attempt spent (its last heartbeat's) is charged to the trial.
    fn claim_orphans(&mut self, study: i64, owner: &str, stale_after: f64) -> Result<Vec<TrialRecord>>;
    /// Gives up the RUNNING trials of `owner` (a runner interrupted on
    /// purpose, by Ctrl-C or SIGTERM): whoever claims them next runs them
    /// again without counting a crash. Returns how many.
    fn release(&mut self, owner: &str) -> Result<u64>;
    /// Another connection to the same store, for a heartbeat thread; `None`
    /// for a store no other connection can see (in memory).
    fn connect_again(&self) -> Result<Option<Box<dyn Storage>>>;
}

/// Metrics as JSON with non-finite values kept: `NaN`, `inf` and `-inf` are
/// written as strings (JSON has no such numbers).
pub mod metrics {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Num {
        Finite(f64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        let out: BTreeMap<&str, Num> =
            m.iter().map(|(k, &v)| (k.as_str(), if v.is_finite() { Num::Finite(v) } else { Num::Text(format!("{v}")) })).collect();
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let raw: BTreeMap<String, Num> = BTreeMap::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| match v {
                Num::Finite(x) => Ok((k, x)),
                Num::Text(t) => t.parse::<f64>().map(|x| (k, x)).map_err(|_| serde::de::Error::custom(format!("metric value `{t}`"))),
            })
            .collect()
    }

    /// The stored JSON of a metrics map.
    pub fn to_json(m: &BTreeMap<String, f64>) -> String {
        serialize(m, serde_json::value::Serializer).map(|v| v.to_string()).unwrap_or_else(|_| "{}".into())
    }

    /// Reads [`to_json`]'s output.
    pub fn from_json(text: &str) -> serde_json::Result<BTreeMap<String, f64>> {
        let mut de = serde_json::Deserializer::from_str(text);
        deserialize(&mut de)
    }
}

/// Opens a store by URL: a path or `sqlite://PATH` (a missing or empty file
/// becomes a new store; any other file that is not an archsearch store is
/// an error and is left untouched), or `postgres://…` / `postgresql://…`
/// (a PostgreSQL database shared by workers on many machines).
pub fn open(url: &str) -> Result<Box<dyn Storage>> {
    if is_postgres(url) {
        return Ok(Box::new(PostgresStorage::open(url)?));
    }
    Ok(Box::new(SqliteStorage::open(sqlite_path(url)?)?))
}

/// Opens an existing store by URL for reading only: nothing is created,
/// migrated or written (a store of an older schema is read as it is).
pub fn open_read_only(url: &str) -> Result<Box<dyn Storage>> {
    if is_postgres(url) {
        return Ok(Box::new(PostgresStorage::open_read_only(url)?));
    }
    Ok(Box::new(SqliteStorage::open_read_only(sqlite_path(url)?)?))
}

/// Whether a store URL names a PostgreSQL server.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A store URL as messages may show it (a password replaced by `***`).
pub fn shown_url(url: &str) -> String {
    if is_postgres(url) {
        postgres::redact(url)
    } else {
        url.to_string()
    }
}

fn sqlite_path(url: &str) -> Result<&str> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        return Ok(rest);
    }
    if url.contains("://") {
        return Err(StoreError::Url(url.to_string()));
    }
    Ok(url)
}

/// Unix time in seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// This host's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// This machine as owner ids name it: the host name, the kernel's boot id
/// and this process's pid namespace (`host/boot.pidns`). Two machines, or two
/// containers, that share a host name still differ, so a process id is only
/// ever checked on the machine (and in the namespace) it belongs to.
pub fn machine() -> String {
    static MACHINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MACHINE
        .get_or_init(|| {
            let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().replace('-', "");
            let ns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            let ns: String = ns.chars().filter(char::is_ascii_digit).collect();
            format!("{}/{}.{ns}", hostname(), boot.trim().get(..8).unwrap_or("0"))
        })
        .clone()
}

/// Owners of this process that are still running (see [`owner_id`]).
static LIVE_OWNERS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The start time of process `pid` (clock ticks since boot, field 22 of
/// `/proc/PID/stat`): with the pid, it names one process even after its pid
/// is reused.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// An owner id for this process: `machine:pid@start:token` (see
/// [`machine`]), the start time
/// telling this process from a later one with the same pid, the token
/// telling apart runners in one process. It counts as alive until
/// [`release_owner`].
pub fn owner_id(token: u64) -> String {
    let pid = std::process::id();
    let id = match process_start(pid) {
        Some(start) => format!("{}:{pid}@{start}:{token:x}", machine()),
        None => format!("{}:{pid}:{token:x}", machine()),
    };
    LIVE_OWNERS.lock().unwrap_or_else(|e| e.into_inner()).push(id.clone());
    id
}

/// The owners of this process that are still running.
pub fn live_owners() -> Vec<String> {
    LIVE_OWNERS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Marks an owner of this process as finished.
pub fn release_owner(owner: &str) {
    LIVE_OWNERS.lock().unwrap_or_else(|e| e.into_inner()).retain(|o| o != owner);
}

/// Whether the runner named by an owner id may still be working on its
/// trial: a runner of this process until it is released; another process of
/// this host while that very process (pid and start time) runs and its
/// heartbeat is fresh; a runner elsewhere while its heartbeat is fresh.
pub fn owner_alive(owner: &str, me: &str, heartbeat_age: f64, stale_after: f64) -> bool {
    if owner == me {
        return true;
    }
    let mut parts = owner.rsplitn(3, ':');
    let (_token, process, host) = (parts.next(), parts.next(), parts.next());
    let fresh = heartbeat_age < stale_after;
    if host != Some(machine().as_str()) {
        return fresh;
    }
    let (pid, start) = match process.map(|p| p.split_once('@').unwrap_or((p, ""))) {
        Some((pid, start)) => (pid.parse::<u32>().ok(), start.parse::<u64>().ok()),
        None => (None, None),
    };
    let Some(pid) = pid else { return fresh };
    if pid == std::process::id() && start.is_none_or(|s| Some(s) == process_start(pid)) {
        // This process: alive while that runner has not finished.
        return LIVE_OWNERS.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|o| o == owner);
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    let running = match (start, process_start(pid)) {
        // The pid may have been reused: only the same start time is the same process.
        (Some(s), Some(now)) => s == now,
        // No start time to compare (an older owner id, or /proc hidden):
        // the process exists or not.
        _ => exists,
    };
    running && fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process of this host is alive only with the same pid and start
    /// time, and a fresh heartbeat: a reused pid is not mistaken for it.
    #[test]
    fn an_owner_whose_pid_was_reused_is_not_alive() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start = process_start(pid).expect("start time of a running process");
        let host = machine();
        let me = owner_id(7);
        let owner = |start: u64| format!("{host}:{pid}@{start}:1");
        assert!(owner_alive(&owner(start), &me, 1.0, 60.0));
        assert!(!owner_alive(&owner(start + 1), &me, 1.0, 60.0), "same pid, another start time: another process");
        assert!(!owner_alive(&owner(start), &me, 61.0, 60.0), "a stale heartbeat");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!owner_alive(&owner(start), &me, 1.0, 60.0), "the process is gone");
        // Runners of this process are alive until released, whatever their heartbeat.
        let other = owner_id(8);
        assert!(owner_alive(&other, &me, 1e9, 60.0));
        release_owner(&other);
        assert!(!owner_alive(&other, &me, 1.0, 60.0));
        release_owner(&me);
    }

    #[test]
    fn metrics_keep_nan_and_infinities() {
        let m = BTreeMap::from([("a".to_string(), f64::NAN), ("b".to_string(), 1.5), ("c".to_string(), f64::NEG_INFINITY)]);
        let back = metrics::from_json(&metrics::to_json(&m)).unwrap();
        assert!(back["a"].is_nan() && back["b"] == 1.5 && back["c"] == f64::NEG_INFINITY);
    }
}
