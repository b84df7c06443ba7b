//! Evaluation tasks: what turns an architecture into a score.
//!
//! A [`Task`] evaluates one architecture of its space and returns the value
//! the search maximises or minimises, the other metrics worth recording, and
//! the (real or simulated) cost of the evaluation. Tabular tasks look the
//! answer up in a table ([`tabular`]); training tasks train a network.

pub mod tabular;

use std::collections::BTreeMap;

use archsearch_core::{Architecture, Space};

/// The result of evaluating one architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The objective the study optimises.
    pub value: f64,
    /// Every metric worth recording (the objective and the report metric included).
    pub metrics: BTreeMap<String, f64>,
    /// Cost of the evaluation in (simulated) seconds, counted against a cost budget.
    pub cost: f64,
}

/// Errors of tasks; each names the file, line, column or architecture at fault.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{path}: {message}")]
    Data { path: String, message: String },
    #[error("architecture `{0}` is not in the table")]
    NotInTable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("evaluation failed: {0}")]
    Failed(String),
}

/// Where a running evaluation reports intermediate values (per epoch, say).
pub trait Reporter {
    fn report(&mut self, step: u64, value: f64);
    /// Whether the evaluation should stop (its trial was taken over by
    /// another runner); a task checks it between steps.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A reporter that drops everything (for replays that store nothing).
pub struct NoReport;
impl Reporter for NoReport {
    fn report(&mut self, _step: u64, _value: f64) {}
}

/// Whom a checkpoint belongs to. Every checkpoint carries one, and loading
/// checks it: a checkpoint whose fingerprint differs (another study of the
/// same name, another trial, another architecture, another config) is never
/// used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// The study's unique id (made when the study is created).
    pub study: String,
    /// `trial-N` or `member-N`.
    pub owner: String,
    /// The canonical architecture.
    pub arch: String,
    /// A hash of everything in the config that shapes the weights (the
    /// network, the fidelity, the optimiser, the data); the task fills it in.
    pub config: String,
}

/// Where a trial keeps its checkpoints, and whose they are: the task makes
/// the [`Fingerprint`] from these, the architecture and its own config.
#[derive(Debug, Clone)]
pub struct CheckpointSlot {
    /// The trial's own local folder, kept across crashes: the store's
    /// folder (`STORE.ckpt/STUDY/trial-N/`), or this worker's cache of a
    /// shared artifact store.
    pub dir: std::path::PathBuf,
    /// The study's unique id.
    pub study: String,
    /// `trial-N`.
    pub owner: String,
    /// The runner evaluating the trial (`machine:pid@start:token`, see `archsearch_store::machine`), written
    /// into each checkpoint it makes.
    pub runner: String,
    /// Where the checkpoint is shared with workers on other machines, if
    /// anywhere: pulled before training resumes, pushed after each write.
    pub shared: Option<SharedSlot>,
}

/// A checkpoint's place in a shared artifact store.
#[derive(Debug, Clone)]
pub struct SharedSlot {
    pub store: std::sync::Arc<dyn Artifacts>,
    /// The object key of the newest checkpoint (`STUDY/trial-N/checkpoint.safetensors`).
    pub key: String,
}

/// A store of files that every worker of a study reaches (a shared folder,
/// S3-compatible object storage). Puts are atomic: a reader sees the old
/// object or the new one, never a torn one.
pub trait Artifacts: Send + Sync + std::fmt::Debug {
    /// Uploads the local file `from` as `key`, replacing it.
    fn put(&self, key: &str, from: &std::path::Path) -> Result<(), String>;
    /// Downloads `key` into the local file `to`; `Ok(false)`: no such object.
    fn get(&self, key: &str, to: &std::path::Path) -> Result<bool, String>;
    /// The store's URL, for messages.
    fn url(&self) -> &str;
}

/// What an evaluation knows about the trial it runs for.
pub struct TrialContext<'a> {
    /// The trial's number in its study.
    pub number: u64,
    /// The trial's seed (weights, data order, augmentation).
    pub seed: u64,
    /// Where this trial's checkpoints go; `None` when nothing should be
    /// checkpointed.
    pub checkpoint: Option<CheckpointSlot>,
    /// Where intermediate values go.
    pub reporter: &'a mut dyn Reporter,
    /// The budget (steps of the task's fidelity axis, e.g. epochs) to
    /// evaluate up to; `None`: the task's full evaluation. A task that can
    /// resume (from the checkpoint folder) continues from where an earlier,
    /// smaller budget stopped and charges only the new part.
    pub budget: Option<u64>,
}

impl<'a> TrialContext<'a> {
    /// A context that checkpoints nothing and drops intermediate values.
    pub fn detached(number: u64, seed: u64, reporter: &'a mut dyn Reporter) -> Self {
        TrialContext { number, seed, checkpoint: None, reporter, budget: None }
    }
}

/// Something that scores architectures of one space.
pub trait Task: Send + Sync {
    /// The space whose architectures this task evaluates.
    fn space(&self) -> &Space;
    /// The name of the objective (e.g. a column or `val_accuracy`).
    fn objective(&self) -> &str;
    /// Whether the task can evaluate up to `budget` steps (see
    /// [`TrialContext::budget`]); the error says which budgets it has.
    fn check_budget(&self, _budget: u64) -> Result<(), TaskError> {
        Err(TaskError::Invalid("this task has no fidelity axis: it evaluates every architecture in full".into()))
    }
    /// Evaluates one architecture.
    fn evaluate(&self, arch: &Architecture, ctx: &mut TrialContext<'_>) -> Result<Evaluation, TaskError>;
    /// What a failed evaluation of `arch` up to `budget` cost, given the wall
    /// seconds it ran (a failure is charged what it consumed, so a cost
    /// budget ends even when every trial fails). Default: those seconds.
    fn failure_cost(&self, _arch: &Architecture, _budget: Option<u64>, seconds: f64) -> f64 {
        seconds
    }
    /// Whether a `cost` budget can ever be spent: false for a task that
    /// charges nothing per evaluation (a table with no cost).
    fn charges_cost(&self) -> bool {
        true
    }
}
