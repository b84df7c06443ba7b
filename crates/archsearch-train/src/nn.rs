//! Layers, initialised as PyTorch initialises them, with every tensor named
//! by its path in a [`tch::nn::VarStore`] (`pos3.conv.weight`).
//!
//! Initial values come from the trial's own seeded generator, not from
//! libtorch's process-wide one, so trials built concurrently on several
//! threads are still deterministic, and a "fresh initialisation" of any
//! layer can be drawn again on demand.

use rand::Rng as _;
use tch::nn::Path;
use tch::{Kind, Tensor};

pub type InitRng = rand_chacha::ChaCha8Rng;

/// A tensor of `dims` uniform in `[-bound, bound]`.
pub fn uniform(rng: &mut InitRng, dims: &[i64], bound: f64) -> Tensor {
    let n: i64 = dims.iter().product();
    let b = bound as f32;
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-b..=b)).collect();
    Tensor::from_slice(&v).view(dims)
}

fn param(p: &Path, name: &str, t: Tensor) -> Tensor {
    p.var_copy(name, &t.to_device(p.device()))
}

/// `nn.Conv2d`: weight and bias uniform in `±1/sqrt(fan_in)` (PyTorch's
/// `kaiming_uniform_(a=√5)` and its bias rule).
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    stride: i64,
    padding: i64,
    dilation: i64,
    groups: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub cin: i64,
    pub cout: i64,
    pub k: i64,
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
    pub groups: i64,
    pub bias: bool,
}

impl ConvSpec {
    pub fn new(cin: i64, cout: i64, k: i64) -> Self {
        ConvSpec { cin, cout, k, stride: 1, padding: k / 2, dilation: 1, groups: 1, bias: true }
    }
}

impl Conv2d {
    pub fn new(p: &Path, rng: &mut InitRng, s: ConvSpec) -> Self {
        let fan_in = (s.cin / s.groups) * s.k * s.k;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let weight = param(p, "weight", uniform(rng, &[s.cout, s.cin / s.groups, s.k, s.k], bound));
        let bias = s.bias.then(|| param(p, "bias", uniform(rng, &[s.cout], bound)));
        Conv2d { weight, bias, stride: s.stride, padding: s.padding, dilation: s.dilation, groups: s.groups }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, self.bias.as_ref(), [self.stride; 2], [self.padding; 2], [self.dilation; 2], self.groups)
    }
}

/// `nn.Linear`: weight and bias uniform in `±1/sqrt(in)`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(p: &Path, rng: &mut InitRng, cin: i64, cout: i64) -> Self {
        let bound = 1.0 / (cin as f64).sqrt();
        Linear { weight: param(p, "weight", uniform(rng, &[cout, cin], bound)), bias: param(p, "bias", uniform(rng, &[cout], bound)) }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// `nn.BatchNorm2d`: weight 1, bias 0, running mean 0 and variance 1, an
/// integer `num_batches_tracked`; momentum 0.1, eps 1e-5.
#[derive(Debug)]
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
}

impl BatchNorm {
    pub fn new(p: &Path, c: i64) -> Self {
        let dev = p.device();
        BatchNorm {
            weight: param(p, "weight", Tensor::ones([c], (Kind::Float, dev))),
            bias: param(p, "bias", Tensor::zeros([c], (Kind::Float, dev))),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
            num_batches_tracked: p.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, dev)), false),
        }
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            0.1,
            1e-5,
            false,
        )
    }
}

/// `nn.LayerNorm` over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    dim: i64,
}

impl LayerNorm {
    pub fn new(p: &Path, dim: i64) -> Self {
        let dev = p.device();
        LayerNorm {
            weight: param(p, "weight", Tensor::ones([dim], (Kind::Float, dev))),
            bias: param(p, "bias", Tensor::zeros([dim], (Kind::Float, dev))),
            dim,
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm([self.dim], Some(&self.weight), Some(&self.bias), 1e-5, false)
    }
}

/// A tensor of `dims` drawn from N(0, std²) by Box–Muller on `rng`.
pub fn normal(rng: &mut InitRng, dims: &[i64], std: f64) -> Tensor {
    let n: i64 = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.random();
            (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    Tensor::from_slice(&v).view(dims)
}
