//! The ask/tell interface every search strategy implements.
//!
//! The loop is: `ask` for an architecture, evaluate it elsewhere, `tell` the
//! outcome. A strategy always *maximises* the value it is told (the study
//! flips the sign for minimised objectives). Everything a strategy knows is
//! in its state, which [`Strategy::save_state`] turns into bytes that the
//! study stores after every ask and tell, so a resumed study continues the
//! very same search.

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

/// A search strategy with an ask/tell interface.
pub trait Strategy: Send {
    /// The strategy's name as configs and reports spell it.
    fn name(&self) -> &str;
    /// Proposes the next architecture to evaluate.
    fn ask(&mut self) -> Result<Architecture, StrategyError>;
    /// Reports the outcome of an architecture this strategy asked for.
    fn tell(&mut self, arch: &Architecture, outcome: Outcome) -> Result<(), StrategyError>;
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
