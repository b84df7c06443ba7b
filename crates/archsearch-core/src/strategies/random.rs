//! Random search: every ask is a uniform sample of the space.
//!
//! The baseline every NAS paper must beat (Li & Talwalkar, "Random Search and
//! Reproducibility for Neural Architecture Search", UAI 2019).

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::space::{Architecture, Space};
use crate::strategy::{from_state, to_state, Outcome, Rng, Strategy, StrategyError};

/// Random search has no settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

pub struct RandomSearch {
    space: Space,
    rng: Rng,
}

impl RandomSearch {
    pub fn new(space: Space, _config: Config, seed: u64) -> Self {
        RandomSearch { space, rng: Rng::seed_from_u64(seed) }
    }
}

impl Strategy for RandomSearch {
    fn name(&self) -> &str {
        "random"
    }
    fn ask(&mut self) -> Result<Architecture, StrategyError> {
        Ok(self.space.sample(&mut self.rng))
    }
    fn tell(&mut self, _arch: &Architecture, _outcome: Outcome) -> Result<(), StrategyError> {
        Ok(())
    }
    fn save_state(&self) -> Result<Vec<u8>, StrategyError> {
        to_state(&self.rng)
    }
    fn load_state(&mut self, state: &[u8]) -> Result<(), StrategyError> {
        self.rng = from_state(state)?;
        Ok(())
    }
}
