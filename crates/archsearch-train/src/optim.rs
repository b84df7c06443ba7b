//! SGD (momentum, Nesterov), Adam and AdamW with their state as named
//! tensors (so checkpoints hold it), mirroring PyTorch's single-tensor
//! implementations step for step; and learning-rate schedules.

use serde::{Deserialize, Serialize};
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The same learning rate every epoch.
    Constant,
    /// Cosine annealing to zero over the run (per epoch, as `CosineAnnealingLR`).
    Cosine,
    /// Multiply by `gamma` every `step_size` epochs (as `StepLR`).
    Step,
}

/// Optimiser settings (`[task.train]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub optimizer: OptimizerKind,
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    pub nesterov: bool,
    /// L2 penalty (SGD, Adam) or decoupled decay (AdamW).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub schedule: Schedule,
    /// `step` schedule: epochs between decays.
    pub step_size: usize,
    /// `step` schedule: decay factor.
    pub gamma: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            schedule: Schedule::Cosine,
            step_size: 30,
            gamma: 0.1,
        }
    }
}

impl OptimConfig {
    /// The learning rate of `epoch` (0-based) in a run of `epochs`.
    pub fn lr_at(&self, epoch: usize, epochs: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => 0.5 * self.lr * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64).cos()),
            Schedule::Step => self.lr * self.gamma.powi((epoch / self.step_size.max(1)) as i32),
        }
    }
}

/// An optimiser over named parameters.
pub struct Optimizer {
    pub config: OptimConfig,
    params: Vec<(String, Tensor)>,
    /// Per parameter: momentum buffer (SGD) or `exp_avg`, `exp_avg_sq` (Adam).
    state: Vec<Vec<Tensor>>,
    pub step: i64,
}

impl Optimizer {
    pub fn new(config: OptimConfig, params: Vec<(String, Tensor)>) -> Self {
        let state = params
            .iter()
            .map(|(_, p)| match config.optimizer {
                OptimizerKind::Sgd => vec![p.zeros_like()],
                OptimizerKind::Adam | OptimizerKind::Adamw => vec![p.zeros_like(), p.zeros_like()],
            })
            .collect();
        Optimizer { config, params, state, step: 0 }
    }

    fn buffer_names(&self) -> &'static [&'static str] {
        match self.config.optimizer {
            OptimizerKind::Sgd => &["momentum_buffer"],
            _ => &["exp_avg", "exp_avg_sq"],
        }
    }

    /// The state as `(optim.<param>.<buffer>, tensor)` pairs.
    pub fn named_state(&self) -> Vec<(String, Tensor)> {
        let names = self.buffer_names();
        let mut out = Vec::new();
        for ((name, _), bufs) in self.params.iter().zip(&self.state) {
            for (b, t) in names.iter().zip(bufs) {
                out.push((format!("optim.{name}.{b}"), t.shallow_clone()));
            }
        }
        out
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One step at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = &self.config;
        let t = self.step;
        tch::no_grad(|| {
            for ((_, p), bufs) in self.params.iter_mut().zip(&mut self.state) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                match c.optimizer {
                    OptimizerKind::Sgd => {
                        let g = if c.weight_decay != 0.0 { &g + &*p * c.weight_decay } else { g };
                        let d = if c.momentum != 0.0 {
                            let buf = &mut bufs[0];
                            if t == 1 {
                                buf.copy_(&g);
                            } else {
                                *buf *= c.momentum;
                                *buf += &g;
                            }
                            if c.nesterov {
                                &g + &*buf * c.momentum
                            } else {
                                buf.shallow_clone()
                            }
                        } else {
                            g
                        };
                        *p -= d * lr;
                    }
                    OptimizerKind::Adam | OptimizerKind::Adamw => {
                        let g = if c.optimizer == OptimizerKind::Adam && c.weight_decay != 0.0 { &g + &*p * c.weight_decay } else { g };
                        if c.optimizer == OptimizerKind::Adamw && c.weight_decay != 0.0 {
                            *p *= 1.0 - lr * c.weight_decay;
                        }
                        let _ = bufs[0].lerp_(&g, 1.0 - c.beta1);
                        bufs[1] *= c.beta2;
                        bufs[1] += (&g * &g) * (1.0 - c.beta2);
                        let bc1 = 1.0 - c.beta1.powi(t as i32);
                        let bc2 = 1.0 - c.beta2.powi(t as i32);
                        let denom = bufs[1].sqrt() / bc2.sqrt() + c.eps;
                        *p -= (&bufs[0] / denom) * (lr / bc1);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn minimise(cfg: OptimConfig) -> f64 {
        let p = Tensor::from_slice(&[3.0f32, -2.0]).set_requires_grad(true);
        let mut opt = Optimizer::new(cfg.clone(), vec![("w".into(), p.shallow_clone())]);
        for _ in 0..300 {
            opt.zero_grad();
            let loss = (&p * &p).sum(Kind::Float);
            loss.backward();
            opt.step(cfg.lr);
        }
        (&p * &p).sum(Kind::Float).double_value(&[])
    }

    #[test]
    fn every_optimiser_minimises_a_quadratic() {
        for optimizer in [OptimizerKind::Sgd, OptimizerKind::Adam, OptimizerKind::Adamw] {
            let lr = if optimizer == OptimizerKind::Sgd { 0.05 } else { 0.1 };
            let cfg = OptimConfig { optimizer, lr, weight_decay: 1e-4, ..Default::default() };
            assert!(minimise(cfg) < 1e-2, "{optimizer:?}");
        }
    }

    #[test]
    fn schedules() {
        let c = OptimConfig { lr: 1.0, ..Default::default() };
        assert_eq!(c.lr_at(0, 10), 1.0);
        assert!((c.lr_at(5, 10) - 0.5).abs() < 1e-12);
        let s = OptimConfig { lr: 1.0, schedule: Schedule::Step, step_size: 2, gamma: 0.5, ..Default::default() };
        assert_eq!((s.lr_at(1, 10), s.lr_at(2, 10), s.lr_at(5, 10)), (1.0, 0.5, 0.25));
    }
}
