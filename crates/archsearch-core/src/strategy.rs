//! The ask/tell interface every search strategy implements.
//!
//! The loop is: `ask` for an architecture, evaluate it elsewhere, `tell` the
//! outcome. A strategy always *maximises* the value it is told (the study
//! flips the sign for minimised objectives). Everything a strategy knows is
//! in its state, which [`Strategy::save_state`] turns into bytes that the
//! study stores after every ask and tell, so a resumed study continues the
//! very same search.

use serde::{Deserialize, Serialize};

use crate::space::{Architecture, SpaceError};

/// The random generator every strategy uses: seeded, portable, serialisable.
pub type Rng = rand_chacha::ChaCha8Rng;

/// What an evaluation of an asked architecture came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Finished; `value` is the fitness (higher is better).
    Complete { value: f64 },
    /// Stopped early by a pruner, at the last value reported, if any.
    Pruned { value: Option<f64> },
    /// Failed (error, NaN loss, ...): no value.
    Failed,
}

impl Outcome {
    /// The value of a complete trial.
    pub fn value(&self) -> Option<f64> {
        match self {
            Outcome::Complete { value } => Some(*value),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    #[error(transparent)]
    Space(#[from] SpaceError),
    #[error("invalid strategy config: {0}")]
    Config(String),
    #[error("cannot restore strategy state: {0}")]
    State(String),
    #[error("strategy backend error: {0}")]
    Backend(String),
}

/// A piece of work a strategy asks for: the multi-fidelity form of an ask.
///
/// A *budget* is a number of steps of the task's fidelity axis (training
/// epochs, or the epochs of a table's columns); `None` means the task's full
/// evaluation. A trial evaluated below the strategy's [`Strategy::max_budget`]
/// is *paused* after its tell: the strategy may later resume it to a larger
/// budget, or prune it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Job {
    /// Start a new trial of `arch`, evaluated up to `budget`.
    Start { arch: Architecture, budget: Option<u64> },
    /// Continue the paused trial number `trial` up to `budget`. The job
    /// names the trial only: its architecture is the one its `Start` asked
    /// for, which the runner reads back from its records (strategies keep
    /// trial numbers, not architectures, so their state stays small).
    Resume { trial: u64, budget: u64 },
    /// Nothing can start until an evaluation in flight is told (a
    /// synchronous rung waiting for its last trials).
    Wait,
}

/// A search strategy with an ask/tell interface.
///
/// Plain strategies implement [`Strategy::ask`] and [`Strategy::tell`];
/// multi-fidelity ones (successive halving, Hyperband, ASHA) implement the
/// job form instead ([`Strategy::ask_job`], [`Strategy::tell_job`],
/// [`Strategy::max_budget`]), which is what the study runner calls. Each
/// form's defaults are written in terms of the other (or refuse), so a
/// strategy implements exactly one of them.
pub trait Strategy: Send {
    /// The strategy's name as configs and reports spell it.
    fn name(&self) -> &str;
    /// Proposes the next architecture to evaluate.
    fn ask(&mut self) -> Result<Architecture, StrategyError> {
        Err(StrategyError::Config(format!("`{}` asks for jobs with budgets (ask_job), not single architectures", self.name())))
    }
    /// Reports the outcome of an architecture this strategy asked for.
    fn tell(&mut self, _arch: &Architecture, _outcome: Outcome) -> Result<(), StrategyError> {
        Err(StrategyError::Config(format!("`{}` is told per job (tell_job)", self.name())))
    }
    /// The next job, given the number the next new trial will get. The
    /// default starts a trial of [`Strategy::ask`] at the full budget.
    fn ask_job(&mut self, _next_trial: u64) -> Result<Job, StrategyError> {
        Ok(Job::Start { arch: self.ask()?, budget: None })
    }
    /// Reports the outcome of trial `trial` (of architecture `arch`, for a
    /// resumed trial the one it started with) evaluated up to `budget`;
    /// returns the paused trials the strategy prunes now (they will never
    /// resume).
    fn tell_job(&mut self, _trial: u64, arch: &Architecture, _budget: Option<u64>, outcome: Outcome) -> Result<Vec<u64>, StrategyError> {
        self.tell(arch, outcome)?;
        Ok(Vec::new())
    }
    /// The largest budget this strategy asks for; a trial evaluated to a
    /// smaller one is paused, not complete. `None`: every trial is evaluated
    /// in full.
    fn max_budget(&self) -> Option<u64> {
        None
    }
    /// The whole state (random generator included) as bytes.
    fn save_state(&self) -> Result<Vec<u8>, StrategyError>;
    /// Restores a state written by `save_state` of the same strategy and config.
    fn load_state(&mut self, state: &[u8]) -> Result<(), StrategyError>;
}

/// Serialises a serde state as JSON bytes (the format of the pure strategies).
pub fn to_state<T: serde::Serialize>(state: &T) -> Result<Vec<u8>, StrategyError> {
    serde_json::to_vec(state).map_err(|e| StrategyError::State(e.to_string()))
}

/// Reads a state written by [`to_state`].
pub fn from_state<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StrategyError> {
    serde_json::from_slice(bytes).map_err(|e| StrategyError::State(e.to_string()))
}
