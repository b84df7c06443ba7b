//! Regularized evolution (aging evolution).
//!
//! Real, Aggarwal, Huang & Le, "Regularized Evolution for Image Classifier
//! Architecture Search", AAAI 2019. A population of the `population` most
//! recently evaluated architectures is kept as a queue. The first
//! `population` asks are uniform samples; after that each ask draws `sample`
//! members at random (with replacement, as in the paper's Algorithm 1), takes
//! the fittest as parent and mutates one position. Each tell pushes the child
//! onto the queue and removes the *oldest* member, not the worst.
//!
//! Defaults are the NAS-Bench-201 settings (Dong & Yang, ICLR 2020, §5:
//! population 10, tournament sample 3); the original paper used 100 and 25 on
//! the NASNet space.
//!
//! Asked architectures whose outcome has not arrived yet (parallel workers)
//! are simply not in the population yet; failed ones never enter it.

use std::collections::VecDeque;

use rand::{Rng as _, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::space::{Architecture, Space};
use crate::strategy::{from_state, to_state, Outcome, Rng, Strategy, StrategyError};

/// Settings of regularized evolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Size of the aging population `P` (NAS-Bench-201: 10).
    pub population: usize,
    /// Tournament size `S`: members drawn to pick a parent (NAS-Bench-201: 3).
    pub sample: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { population: 10, sample: 3 }
    }
}

#[derive(Serialize, Deserialize)]
struct State {
    rng: Rng,
    asked: u64,
    population: VecDeque<(Architecture, f64)>,
}

pub struct RegularizedEvolution {
    space: Space,
    config: Config,
    state: State,
}

impl RegularizedEvolution {
    pub fn new(space: Space, config: Config, seed: u64) -> Result<Self, StrategyError> {
        if config.population == 0 || config.sample == 0 {
            return Err(StrategyError::Config("`population` and `sample` must be >= 1".into()));
        }
        Ok(RegularizedEvolution { space, config, state: State { rng: Rng::seed_from_u64(seed), asked: 0, population: VecDeque::new() } })
    }
}

impl Strategy for RegularizedEvolution {
    fn name(&self) -> &str {
        "evolution"
    }

    fn ask(&mut self) -> Result<Architecture, StrategyError> {
        let s = &mut self.state;
        s.asked += 1;
        if s.asked <= self.config.population as u64 || s.population.is_empty() {
            return Ok(self.space.sample(&mut s.rng));
        }
        let mut best: Option<&(Architecture, f64)> = None;
        for _ in 0..self.config.sample {
            let cand = &s.population[s.rng.random_range(0..s.population.len())];
            if best.is_none_or(|b| cand.1 > b.1) {
                best = Some(cand);
            }
        }
        let parent = best.expect("sample >= 1").0.clone();
        Ok(self.space.mutate(&parent, &mut s.rng).0)
    }

    fn tell(&mut self, arch: &Architecture, outcome: Outcome) -> Result<(), StrategyError> {
        if let Some(value) = outcome.value() {
            let pop = &mut self.state.population;
            pop.push_back((arch.clone(), value));
            while pop.len() > self.config.population {
                pop.pop_front();
            }
        }
        Ok(())
    }

    fn save_state(&self) -> Result<Vec<u8>, StrategyError> {
        to_state(&self.state)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), StrategyError> {
        self.state = from_state(state)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a one-max problem evolution must beat its random start by far.
    #[test]
    fn evolution_climbs_one_max() {
        let space = Space::sequence(20, 7);
        let mut evo = RegularizedEvolution::new(space, Config { population: 20, sample: 5 }, 0).unwrap();
        let mut best = 0.0f64;
        for _ in 0..1000 {
            let a = evo.ask().unwrap();
            let v = a.choices.iter().filter(|&&c| c == 0).count() as f64;
            best = best.max(v);
            evo.tell(&a, Outcome::Complete { value: v }).unwrap();
        }
        // A uniform sample scores about 20/7 ≈ 3.
        assert!(best >= 15.0, "best {best}");
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let space = Space::nb201();
        let mut a = RegularizedEvolution::new(space.clone(), Config::default(), 7).unwrap();
        let f = |x: &Architecture| x.choices.iter().sum::<usize>() as f64;
        for _ in 0..25 {
            let x = a.ask().unwrap();
            a.tell(&x, Outcome::Complete { value: f(&x) }).unwrap();
        }
        let mut b = RegularizedEvolution::new(space, Config::default(), 999).unwrap();
        b.load_state(&a.save_state().unwrap()).unwrap();
        for _ in 0..25 {
            let (x, y) = (a.ask().unwrap(), b.ask().unwrap());
            assert_eq!(x, y);
            a.tell(&x, Outcome::Complete { value: f(&x) }).unwrap();
            b.tell(&y, Outcome::Complete { value: f(&y) }).unwrap();
        }
    }
}
