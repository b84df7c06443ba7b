//! REINFORCE with a moving-average baseline.
//!
//! Williams, "Simple statistical gradient-following algorithms for
//! connectionist reinforcement learning", 1992; as an architecture search
//! controller, Zoph & Le, "Neural Architecture Search with Reinforcement
//! Learning", ICLR 2017. After each evaluated architecture `h` with reward
//! `R`, one Adam step on `-(R - b) · log p_α(h)`, where the baseline `b` is an
//! exponential moving average of the previous rewards.
//!
//! Defaults: baseline decay 0.9 (NAS-Bench-201's REINFORCE, Dong & Yang 2020);
//! learning rate 0.01 for the independent policy (NATS-Bench's REINFORCE
//! script) and 0.0006 for the LSTM controller (Zoph & Le 2017), whose other
//! defaults (2 layers of 35 units, uniform ±0.08 init) are also theirs.

use archsearch_core::{Architecture, Outcome, Rng, Space, Strategy, StrategyError};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::adam::Adam;
use crate::policy::{Policy, PolicyKind, PolicySpec};
use crate::state::{pack, unpack};
use crate::Baseline;

/// Settings of REINFORCE (also the base of [`crate::ppo::Config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `independent` (per-decision logits) or `lstm` (sequential controller).
    pub policy: Option<PolicyKind>,
    /// Adam learning rate; default 0.01 (independent) or 0.0006 (LSTM).
    pub learning_rate: Option<f64>,
    /// Decay of the moving-average baseline.
    pub baseline_decay: f64,
    /// Weight of an entropy bonus (0: none, as in both papers).
    pub entropy_weight: f64,
    /// LSTM hidden units.
    pub hidden: usize,
    /// LSTM layers.
    pub layers: usize,
    /// LSTM weights start uniform in `[-init_range, init_range]`.
    pub init_range: f64,
}

impl Default for Config {
    fn default() -> Self {
        let lstm = PolicySpec::lstm();
        Config {
            policy: None,
            learning_rate: None,
            baseline_decay: 0.9,
            entropy_weight: 0.0,
            hidden: lstm.hidden,
            layers: lstm.layers,
            init_range: lstm.init_range,
        }
    }
}

impl Config {
    /// Fills in the policy (`default_policy` if unset) and its learning rate.
    pub fn resolve(mut self, default_policy: PolicyKind) -> Self {
        let kind = *self.policy.get_or_insert(default_policy);
        self.learning_rate.get_or_insert(match kind {
            PolicyKind::Independent => 0.01,
            PolicyKind::Lstm => 0.0006,
        });
        self
    }

    pub(crate) fn spec(&self) -> PolicySpec {
        PolicySpec {
            kind: self.policy.unwrap_or(PolicyKind::Independent),
            hidden: self.hidden,
            layers: self.layers,
            init_range: self.init_range,
        }
    }

    pub(crate) fn check(&self) -> Result<(), StrategyError> {
        let lr = self.learning_rate.unwrap_or(0.01);
        let lr_ok = lr > 0.0 && lr.is_finite();
        if !lr_ok || !(0.0..1.0).contains(&self.baseline_decay) || self.hidden == 0 || self.layers == 0 {
            return Err(StrategyError::Config(
                "needs `learning_rate` > 0, 0 <= `baseline_decay` < 1, `hidden` >= 1 and `layers` >= 1".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    rng: Rng,
    adam: Adam,
    baseline: Baseline,
}

pub struct Reinforce {
    name: String,
    config: Config,
    policy: Policy,
    adam: Adam,
    baseline: Baseline,
    rng: Rng,
}

impl Reinforce {
    /// `config` should be resolved ([`Config::resolve`]).
    pub fn new(name: &str, space: &Space, config: Config, seed: u64) -> Result<Self, StrategyError> {
        config.check()?;
        let mut rng = Rng::seed_from_u64(seed);
        let policy = Policy::new(space, config.spec(), &mut rng);
        let adam = Adam::new(policy.num_params(), config.learning_rate.unwrap_or(0.01));
        Ok(Reinforce { name: name.to_string(), config, policy, adam, baseline: Baseline { value: None }, rng })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

impl Strategy for Reinforce {
    fn name(&self) -> &str {
        &self.name
    }

    fn ask(&mut self) -> Result<Architecture, StrategyError> {
        Ok(Architecture::new(self.policy.sample(&mut self.rng).0))
    }

    fn tell(&mut self, arch: &Architecture, outcome: Outcome) -> Result<(), StrategyError> {
        let Some(reward) = outcome.value() else { return Ok(()) };
        let advantage = self.baseline.advantage(reward, self.config.baseline_decay);
        let ew = self.config.entropy_weight;
        let grad = self.policy.gradient(&[arch], |logp, entropy| -(logp.sum(Kind::Float) * advantage) - entropy.sum(Kind::Float) * ew);
        self.adam.update(&mut self.policy.params, &grad);
        Ok(())
    }

    fn save_state(&self) -> Result<Vec<u8>, StrategyError> {
        let header = Header { rng: self.rng.clone(), adam: self.adam.clone(), baseline: self.baseline };
        pack(&header, &[&self.policy.params, &self.adam.m, &self.adam.v])
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), StrategyError> {
        let (h, mut arrays): (Header, _) = unpack(state)?;
        let n = self.policy.num_params();
        if arrays.len() != 3 || arrays.iter().any(|a| a.len() != n) {
            return Err(StrategyError::State("controller state does not match this config".into()));
        }
        self.adam = Adam { v: arrays.pop().unwrap(), m: arrays.pop().unwrap(), ..h.adam };
        self.policy.params = arrays.pop().unwrap();
        self.rng = h.rng;
        self.baseline = h.baseline;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On one-max both controllers must learn to prefer option 0 well above
    /// the uniform rate of 1/K.
    #[test]
    fn reinforce_learns_one_max() {
        for (kind, lr) in [(PolicyKind::Independent, 0.05), (PolicyKind::Lstm, 0.01)] {
            let space = Space::sequence(6, 4);
            let cfg = Config { learning_rate: Some(lr), ..Config::default() }.resolve(kind);
            let mut s = Reinforce::new("r", &space, cfg, 0).unwrap();
            let score = |a: &Architecture| a.choices.iter().filter(|&&c| c == 0).count() as f64;
            for _ in 0..400 {
                let a = s.ask().unwrap();
                s.tell(&a, Outcome::Complete { value: score(&a) }).unwrap();
            }
            let mean: f64 = (0..200).map(|_| score(&s.ask().unwrap())).sum::<f64>() / 200.0;
            assert!(mean > 3.0, "{kind:?}: mean {mean} (uniform: 1.5)");
        }
    }

    #[test]
    fn resumed_controller_continues_identically() {
        let space = Space::nb201();
        let cfg = Config::default().resolve(PolicyKind::Lstm);
        let mut a = Reinforce::new("r", &space, cfg.clone(), 1).unwrap();
        let f = |x: &Architecture| x.choices.iter().sum::<usize>() as f64;
        for _ in 0..10 {
            let x = a.ask().unwrap();
            a.tell(&x, Outcome::Complete { value: f(&x) }).unwrap();
        }
        let mut b = Reinforce::new("r", &space, cfg, 2).unwrap();
        b.load_state(&a.save_state().unwrap()).unwrap();
        for _ in 0..10 {
            let (x, y) = (a.ask().unwrap(), b.ask().unwrap());
            assert_eq!(x, y);
            a.tell(&x, Outcome::Complete { value: f(&x) }).unwrap();
            b.tell(&y, Outcome::Complete { value: f(&y) }).unwrap();
        }
        assert_eq!(a.policy.params, b.policy.params);
    }
}
