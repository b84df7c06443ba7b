//! A fixed list of architectures, asked in order (then again from the
//! start). Used to retrain the best architectures of a search at the target
//! fidelity, and to evaluate a chosen set of architectures.

use serde::{Deserialize, Serialize};

use crate::space::{Architecture, Space};
use crate::strategy::{from_state, to_state, Outcome, Strategy, StrategyError};

/// The architectures, as canonical strings or option indices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub architectures: Vec<String>,
}

pub struct Fixed {
    archs: Vec<Architecture>,
    next: usize,
}

impl Fixed {
    pub fn new(space: &Space, config: Config) -> Result<Self, StrategyError> {
        if config.architectures.is_empty() {
            return Err(StrategyError::Config("`architectures` must list at least one architecture".into()));
        }
        let archs = config.architectures.iter().map(|a| space.parse_any(a)).collect::<Result<_, _>>()?;
        Ok(Fixed { archs, next: 0 })
    }
}

impl Strategy for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }
    fn ask(&mut self) -> Result<Architecture, StrategyError> {
        let a = self.archs[self.next % self.archs.len()].clone();
        self.next += 1;
        Ok(a)
    }
    fn tell(&mut self, _arch: &Architecture, _outcome: Outcome) -> Result<(), StrategyError> {
        Ok(())
    }
    fn save_state(&self) -> Result<Vec<u8>, StrategyError> {
        to_state(&self.next)
    }
    fn load_state(&mut self, state: &[u8]) -> Result<(), StrategyError> {
        self.next = from_state(state)?;
        Ok(())
    }
}
