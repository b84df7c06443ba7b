//! Proximal Policy Optimization for the architecture controller.
//!
//! Schulman et al., "Proximal Policy Optimization Algorithms", 2017; used to
//! train the NASNet controller by Zoph, Vasudevan, Shlens & Le, "Learning
//! Transferable Architectures for Scalable Image Recognition", CVPR 2018.
//! Sampled architectures are collected until `batch_size` rewards are in;
//! then `epochs` Adam steps on the clipped surrogate
//! `-mean(min(ρ·A, clip(ρ, 1-ε, 1+ε)·A))`, with `ρ` the probability ratio of
//! the current policy to the one that sampled, and `A = R - b` the advantage
//! over the moving-average baseline.
//!
//! Defaults: clip ε = 0.2 and 4 epochs (Schulman et al.), batches of 10
//! architectures; the controller and learning rates as for REINFORCE.

use archsearch_core::{Architecture, Outcome, Rng, Space, Strategy, StrategyError};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::adam::Adam;
use crate::policy::{Policy, PolicyKind};
use crate::reinforce::Config as ReinforceConfig;
use crate::state::{pack, unpack};
use crate::Baseline;

/// Settings of PPO. The controller fields mean what they mean for
/// REINFORCE ([`crate::reinforce::Config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `independent` (per-decision logits) or `lstm` (sequential controller).
    pub policy: Option<PolicyKind>,
    /// Adam learning rate; default 0.01 (independent) or 0.0006 (LSTM).
    pub learning_rate: Option<f64>,
    /// Decay of the moving-average baseline.
    pub baseline_decay: f64,
    /// Weight of an entropy bonus.
    pub entropy_weight: f64,
    /// LSTM hidden units.
    pub hidden: usize,
    /// LSTM layers.
    pub layers: usize,
    /// LSTM weights start uniform in `[-init_range, init_range]`.
    pub init_range: f64,
    /// Architectures per policy update.
    pub batch_size: usize,
    /// Adam steps on each batch.
    pub epochs: usize,
    /// Clip range ε of the probability ratio.
    pub clip: f64,
}

impl Default for Config {
    fn default() -> Self {
        let c = ReinforceConfig::default();
        Config {
            policy: c.policy,
            learning_rate: c.learning_rate,
            baseline_decay: c.baseline_decay,
            entropy_weight: c.entropy_weight,
            hidden: c.hidden,
            layers: c.layers,
            init_range: c.init_range,
            batch_size: 10,
            epochs: 4,
            clip: 0.2,
        }
    }
}

impl Config {
    /// Fills in the policy (`default_policy` if unset) and its learning rate.
    pub fn resolve(mut self, default_policy: PolicyKind) -> Self {
        let c = self.controller().resolve(default_policy);
        self.policy = c.policy;
        self.learning_rate = c.learning_rate;
        self
    }

    /// The controller part, as REINFORCE's config.
    pub fn controller(&self) -> ReinforceConfig {
        ReinforceConfig {
            policy: self.policy,
            learning_rate: self.learning_rate,
            baseline_decay: self.baseline_decay,
            entropy_weight: self.entropy_weight,
            hidden: self.hidden,
            layers: self.layers,
            init_range: self.init_range,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Sampled {
    arch: Architecture,
    logp: f64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    rng: Rng,
    adam: Adam,
    baseline: Baseline,
    /// Asked, not yet told.
    pending: Vec<Sampled>,
    /// Told: the sample and its advantage.
    batch: Vec<(Sampled, f64)>,
}

pub struct Ppo {
    name: String,
    config: Config,
    policy: Policy,
    h: Header,
}

impl Ppo {
    pub fn new(name: &str, space: &Space, config: Config, seed: u64) -> Result<Self, StrategyError> {
        let controller = config.controller();
        controller.check()?;
        if config.batch_size == 0 || config.epochs == 0 || config.clip.is_nan() || config.clip <= 0.0 {
            return Err(StrategyError::Config("needs `batch_size` >= 1, `epochs` >= 1 and `clip` > 0".into()));
        }
        let mut rng = Rng::seed_from_u64(seed);
        let policy = Policy::new(space, controller.spec(), &mut rng);
        let adam = Adam::new(policy.num_params(), controller.learning_rate.unwrap_or(0.01));
        let h = Header { rng, adam, baseline: Baseline { value: None }, pending: Vec::new(), batch: Vec::new() };
        Ok(Ppo { name: name.to_string(), config, policy, h })
    }

    fn update(&mut self) {
        let archs: Vec<&Architecture> = self.h.batch.iter().map(|(s, _)| &s.arch).collect();
        let old: Vec<f32> = self.h.batch.iter().map(|(s, _)| s.logp as f32).collect();
        let adv: Vec<f32> = self.h.batch.iter().map(|(_, a)| *a as f32).collect();
        let (old, adv) = (Tensor::from_slice(&old), Tensor::from_slice(&adv));
        let (clip, ew) = (self.config.clip, self.config.entropy_weight);
        for _ in 0..self.config.epochs {
            let grad = self.policy.gradient(&archs, |logp, entropy| {
                let ratio = (logp - &old).exp();
                let surrogate = (&ratio * &adv).minimum(&(ratio.clamp(1.0 - clip, 1.0 + clip) * &adv));
                -surrogate.mean(Kind::Float) - entropy.mean(Kind::Float) * ew
            });
            self.h.adam.update(&mut self.policy.params, &grad);
        }
        self.h.batch.clear();
    }
}

impl Strategy for Ppo {
    fn name(&self) -> &str {
        &self.name
    }

    fn ask(&mut self) -> Result<Architecture, StrategyError> {
        let (choices, logp) = self.policy.sample(&mut self.h.rng);
        let arch = Architecture::new(choices);
        self.h.pending.push(Sampled { arch: arch.clone(), logp });
        Ok(arch)
    }

    fn tell(&mut self, arch: &Architecture, outcome: Outcome) -> Result<(), StrategyError> {
        let sampled = match self.h.pending.iter().position(|s| &s.arch == arch) {
            Some(i) => self.h.pending.remove(i),
            // Not asked by this instance: score it under the current policy.
            None => Sampled { arch: arch.clone(), logp: self.policy.log_prob_values(&[arch])[0] },
        };
        let Some(reward) = outcome.value() else { return Ok(()) };
        let advantage = self.h.baseline.advantage(reward, self.config.baseline_decay);
        self.h.batch.push((sampled, advantage));
        if self.h.batch.len() >= self.config.batch_size {
            self.update();
        }
        Ok(())
    }

    fn save_state(&self) -> Result<Vec<u8>, StrategyError> {
        pack(&self.h, &[&self.policy.params, &self.h.adam.m, &self.h.adam.v])
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), StrategyError> {
        let (h, mut arrays): (Header, _) = unpack(state)?;
        let n = self.policy.num_params();
        if arrays.len() != 3 || arrays.iter().any(|a| a.len() != n) {
            return Err(StrategyError::State("controller state does not match this config".into()));
        }
        self.h = h;
        self.h.adam.v = arrays.pop().unwrap();
        self.h.adam.m = arrays.pop().unwrap();
        self.policy.params = arrays.pop().unwrap();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppo_learns_one_max() {
        for (kind, lr) in [(PolicyKind::Independent, 0.05), (PolicyKind::Lstm, 0.01)] {
            let space = Space::sequence(6, 4);
            let cfg = Config { learning_rate: Some(lr), ..Config::default() };
            let mut s = Ppo::new("p", &space, cfg.resolve(kind), 0).unwrap();
            let score = |a: &Architecture| a.choices.iter().filter(|&&c| c == 0).count() as f64;
            for _ in 0..400 {
                let a = s.ask().unwrap();
                s.tell(&a, Outcome::Complete { value: score(&a) }).unwrap();
            }
            let mean: f64 = (0..200).map(|_| score(&s.ask().unwrap())).sum::<f64>() / 200.0;
            assert!(mean > 3.0, "{kind:?}: mean {mean} (uniform: 1.5)");
        }
    }
}
