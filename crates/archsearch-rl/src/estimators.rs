//! Gradient estimators for `∇α E_{h ~ p_α}[f(h)]`, checked on a problem
//! whose exact gradient is known.
//!
//! The problem: `D` independent categorical decisions of `K` options each,
//! `p_α(h) = Π_d softmax(α_d)[h_d]`, and a fixed `f` with per-decision and
//! pairwise terms, `f(h) = Σ_d w_d[h_d] + Σ_{d<e} V_de[h_d, h_e]` (weights
//! seeded). Its multilinear extension `f̃(z)`, equal to `f` on one-hot `z`,
//! is what relaxed estimators differentiate. The exact gradient is computed
//! by enumerating all `K^D` architectures.
//!
//! The estimators, one sample each:
//! * `reinforce`: `(f(h) − b) ∇α log p(h)`, `b` a moving average of
//!   previous rewards (decay 0.9); unbiased.
//! * `gumbel-soft` (SNAS): `∇α f̃(softmax((log p + g)/τ))`, `g` Gumbel noise;
//!   biased, less so as `τ → 0`, at the price of variance.
//! * `gumbel-st` (GDAS): the hard one-hot `argmax(log p + g)` forward, the
//!   soft sample's gradient backward (straight-through); biased.
//! * `relax` (Grathwohl et al., ICLR 2018):
//!   `[f(b) − c_φ(z̃)] ∇α log p(b) + ∇α c_φ(z) − ∇α c_φ(z̃)` with
//!   `z = log p + g`, `b = argmax z`, `z̃ ~ p(z | b)` (the conditional
//!   Gumbel sample of REBAR) and a surrogate
//!   `c_φ(z) = η f̃(softmax(z/λ)) + r_ρ(softmax(z/λ))` (`r_ρ` a small MLP),
//!   whose parameters follow the gradient of the estimate's squared norm
//!   (its variance) by Adam after every sample; unbiased for every `φ`.

use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::nn::{self, Module as _, OptimizerConfig as _};
use tch::{Device, Kind, Tensor};

/// The test problem: logits `α` and the weights of `f`.
pub struct Problem {
    pub decisions: usize,
    pub options: usize,
    alpha: Vec<f32>,
    /// `[D, K]`.
    w: Tensor,
    /// `[D, D, K, K]`, zero unless `d < e`.
    v: Tensor,
}

fn normal(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random_range(f64::MIN_POSITIVE..1.0), rng.random());
            (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

impl Problem {
    /// `decisions × options` with logits `α ~ N(0, 1)`, `w ~ N(0, 1)` and
    /// pairwise `V ~ N(0, 0.5²)`, drawn from `seed`.
    pub fn new(decisions: usize, options: usize, seed: u64) -> Self {
        let (d, k) = (decisions as i64, options as i64);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let alpha = normal(&mut rng, decisions * options, 1.0);
        let w = Tensor::from_slice(&normal(&mut rng, decisions * options, 1.0)).view([d, k]);
        let mut v = normal(&mut rng, decisions * decisions * options * options, 0.5);
        for a in 0..decisions {
            for b in 0..=a {
                let start = (a * decisions + b) * options * options;
                v[start..start + options * options].fill(0.0);
            }
        }
        Problem { decisions, options, alpha, w, v: Tensor::from_slice(&v).view([d, d, k, k]) }
    }

    /// The logits as a fresh leaf tensor `[D, K]` that records gradients.
    fn alpha(&self) -> Tensor {
        Tensor::from_slice(&self.alpha).view([self.decisions as i64, self.options as i64]).set_requires_grad(true)
    }

    /// `f̃(z)` for `z` of shape `[D, K]` (equal to `f(h)` on one-hot rows).
    fn relaxed(&self, z: &Tensor) -> Tensor {
        (&self.w * z).sum(Kind::Float) + Tensor::einsum("dk,el,dekl->", &[z, z, &self.v], None::<i64>)
    }

    fn one_hot(&self, h: &[usize]) -> Tensor {
        let idx: Vec<i64> = h.iter().map(|&c| c as i64).collect();
        Tensor::from_slice(&idx).one_hot(self.options as i64).to_kind(Kind::Float)
    }

    /// `f(h)`.
    pub fn f(&self, h: &[usize]) -> f64 {
        self.relaxed(&self.one_hot(h)).double_value(&[])
    }

    /// `∇α E[f(h)]`, exactly, by enumerating every architecture.
    pub fn exact_gradient(&self) -> Vec<f64> {
        let alpha = self.alpha();
        let p = alpha.softmax(-1, Kind::Float);
        let n = self.options.pow(self.decisions as u32);
        let terms: Vec<Tensor> = (0..n)
            .map(|i| {
                let h: Vec<usize> = (0..self.decisions).map(|d| (i / self.options.pow(d as u32)) % self.options).collect();
                let prob =
                    (0..self.decisions).fold(Tensor::ones([], (Kind::Float, Device::Cpu)), |acc, d| acc * p.get(d as i64).get(h[d] as i64));
                prob * self.f(&h)
            })
            .collect();
        Tensor::stack(&terms, 0).sum(Kind::Float).backward();
        Vec::<f64>::try_from(alpha.grad().to_kind(Kind::Double).flatten(0, -1)).expect("a gradient")
    }
}

/// Which estimator, and its temperature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimator {
    Reinforce,
    GumbelSoft(f64),
    GumbelStraightThrough(f64),
    Relax,
}

impl Estimator {
    pub fn name(&self) -> &'static str {
        match self {
            Estimator::Reinforce => "reinforce",
            Estimator::GumbelSoft(_) => "gumbel-soft",
            Estimator::GumbelStraightThrough(_) => "gumbel-st",
            Estimator::Relax => "relax",
        }
    }
    pub fn temperature(&self) -> Option<f64> {
        match self {
            Estimator::GumbelSoft(t) | Estimator::GumbelStraightThrough(t) => Some(*t),
            _ => None,
        }
    }
}

/// What [`measure`] found for one estimator.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub estimator: &'static str,
    pub temperature: Option<f64>,
    /// ‖mean estimate − exact gradient‖ / ‖exact gradient‖.
    pub bias: f64,
    /// Mean ‖estimate − mean estimate‖² / ‖exact gradient‖².
    pub variance: f64,
    /// The sampling noise of the mean, √(variance / samples): a bias below a
    /// few times this is indistinguishable from zero.
    pub noise: f64,
    /// Estimates (one sample each).
    pub samples: usize,
}

/// Gumbel noise `[D, K]` from `rng`.
fn gumbel(rng: &mut ChaCha8Rng, d: usize, k: usize) -> (Tensor, Vec<f32>) {
    let u: Vec<f32> = (0..d * k).map(|_| rng.random_range(1e-10f32..1.0)).collect();
    let t = Tensor::from_slice(&u).view([d as i64, k as i64]);
    (-(-t.log()).log(), u)
}

fn argmax_rows(z: &Tensor) -> Vec<usize> {
    Vec::<i64>::try_from(z.argmax(-1, false)).expect("indices").into_iter().map(|i| i as usize).collect()
}

/// The RELAX surrogate `c_φ` and its optimiser.
struct Surrogate {
    /// Owns φ (the optimiser updates it in place).
    _vs: nn::VarStore,
    eta: Tensor,
    log_lambda: Tensor,
    residual: nn::Sequential,
    opt: nn::Optimizer,
}

impl Surrogate {
    fn new(d: usize, k: usize, seed: u64) -> Self {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let eta = root.var("eta", &[], nn::Init::Const(1.0));
        let log_lambda = root.var("log_lambda", &[], nn::Init::Const(0.5f64.ln()));
        let n = (d * k) as i64;
        let residual = nn::seq().add(nn::linear(&root / "r1", n, 16, Default::default())).add_fn(|x| x.tanh()).add(nn::linear(
            &root / "r2",
            16,
            1,
            nn::LinearConfig { ws_init: nn::Init::Const(0.0), ..Default::default() },
        ));
        let opt = nn::Adam::default().build(&vs, 1e-2).expect("an optimiser");
        Surrogate { _vs: vs, eta, log_lambda, residual, opt }
    }

    fn value(&self, problem: &Problem, z: &Tensor) -> Tensor {
        let s = (z / self.log_lambda.exp()).softmax(-1, Kind::Float);
        &self.eta * problem.relaxed(&s) + self.residual.forward(&s.flatten(0, -1)).squeeze()
    }
}

/// One RELAX estimate; then one Adam step of `c_φ` on the estimate's squared norm.
fn relax_estimate(problem: &Problem, c: &mut Surrogate, rng: &mut ChaCha8Rng) -> Tensor {
    let (d, k) = (problem.decisions, problem.options);
    let alpha = problem.alpha();
    let logp = alpha.log_softmax(-1, Kind::Float);
    let (g, _) = gumbel(rng, d, k);
    let z = &logp + g;
    let b = argmax_rows(&z);
    // z̃ ~ p(z | b): the winner's Gumbel, the others truncated below it.
    let v: Vec<f32> = (0..d * k).map(|_| rng.random_range(1e-10f32..1.0)).collect();
    let log_v = Tensor::from_slice(&v).view([d as i64, k as i64]).log();
    let mask = problem.one_hot(&b);
    let log_vb = (&log_v * &mask).sum_dim_intlist(-1, true, Kind::Float);
    let theta = logp.exp();
    let others = -(-(&log_v / &theta) - &log_vb).log();
    let winner = -(-&log_v).log();
    let z_tilde = &mask * winner + (1.0 - &mask) * others;
    let c_z = c.value(problem, &z);
    let c_zt = c.value(problem, &z_tilde);
    let logp_b = (&logp * &mask).sum(Kind::Float);
    let grads = |y: &Tensor| Tensor::run_backward(&[y], &[&alpha], true, true).remove(0);
    let estimate = (problem.f(&b) - &c_zt) * grads(&logp_b) + grads(&c_z) - grads(&c_zt);
    c.opt.zero_grad();
    estimate.square().sum(Kind::Float).backward();
    c.opt.step();
    estimate.detach()
}

/// `samples` independent one-sample estimates of `estimator` on `problem`
/// (a sequence for REINFORCE's baseline and RELAX's surrogate), their bias
/// and variance against the exact gradient.
pub fn measure(problem: &Problem, estimator: Estimator, samples: usize, seed: u64) -> Measured {
    let exact = Tensor::from_slice(&problem.exact_gradient()).to_kind(Kind::Float).view([problem.decisions as i64, problem.options as i64]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (d, k) = (problem.decisions, problem.options);
    let mut baseline = crate::Baseline { value: None };
    let mut surrogate = (estimator == Estimator::Relax).then(|| Surrogate::new(d, k, seed));
    let mut estimates = Vec::with_capacity(samples);
    for _ in 0..samples {
        let g = match estimator {
            Estimator::Reinforce => {
                let p = Tensor::from_slice(&problem.alpha).view([d as i64, k as i64]).softmax(-1, Kind::Float);
                let (noise, _) = gumbel(&mut rng, d, k);
                let h = argmax_rows(&(p.log() + noise));
                let advantage = baseline.advantage(problem.f(&h), 0.9);
                (problem.one_hot(&h) - p) * advantage
            }
            Estimator::GumbelSoft(tau) | Estimator::GumbelStraightThrough(tau) => {
                let alpha = problem.alpha();
                let (noise, _) = gumbel(&mut rng, d, k);
                let soft = ((alpha.log_softmax(-1, Kind::Float) + noise) / tau).softmax(-1, Kind::Float);
                let y = match estimator {
                    Estimator::GumbelSoft(_) => soft,
                    _ => problem.one_hot(&argmax_rows(&soft)) + &soft - soft.detach(),
                };
                problem.relaxed(&y).backward();
                alpha.grad()
            }
            Estimator::Relax => relax_estimate(problem, surrogate.as_mut().expect("a surrogate"), &mut rng),
        };
        estimates.push(g.detach());
    }
    let all = Tensor::stack(&estimates, 0);
    let mean = all.mean_dim(0, false, Kind::Float);
    let scale = exact.square().sum(Kind::Float).double_value(&[]);
    let bias = ((&mean - &exact).square().sum(Kind::Float).double_value(&[]) / scale).sqrt();
    let variance =
        (all - mean.unsqueeze(0)).square().sum_dim_intlist(&[1i64, 2][..], false, Kind::Float).mean(Kind::Float).double_value(&[]) / scale;
    Measured {
        estimator: estimator.name(),
        temperature: estimator.temperature(),
        bias,
        variance,
        noise: (variance / samples as f64).sqrt(),
        samples,
    }
}

/// The estimators `bench-estimators` compares: REINFORCE, soft and
/// straight-through Gumbel at several temperatures, and RELAX.
pub fn all() -> Vec<Estimator> {
    let taus = [3.0, 1.0, 0.5, 0.2, 0.1];
    let mut v = vec![Estimator::Reinforce];
    v.extend(taus.iter().map(|&t| Estimator::GumbelSoft(t)));
    v.extend(taus.iter().map(|&t| Estimator::GumbelStraightThrough(t)));
    v.push(Estimator::Relax);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exact_gradient_matches_finite_differences_of_the_closed_form() {
        let p = Problem::new(3, 4, 7);
        let exact = p.exact_gradient();
        // E[f] in closed form (decisions are independent): f̃ at the probabilities.
        let expectation = |alpha: &[f32]| {
            let probs = Tensor::from_slice(alpha).view([3, 4]).to_kind(Kind::Double).softmax(-1, Kind::Double).to_kind(Kind::Float);
            p.relaxed(&probs).double_value(&[])
        };
        let eps = 1e-2f32;
        for i in 0..12 {
            let (mut up, mut down) = (p.alpha.clone(), p.alpha.clone());
            up[i] += eps;
            down[i] -= eps;
            let fd = (expectation(&up) - expectation(&down)) / (2.0 * eps as f64);
            assert!((fd - exact[i]).abs() < 2e-3, "{i}: {fd} vs {}", exact[i]);
        }
    }

    #[test]
    fn unbiased_estimators_are_unbiased_and_relaxations_trade_bias_for_variance() {
        let p = Problem::new(4, 5, 0);
        let m = |e| measure(&p, e, 1500, 1);
        let (reinforce, relax) = (m(Estimator::Reinforce), m(Estimator::Relax));
        for r in [&reinforce, &relax] {
            assert!(r.bias < 4.0 * r.noise, "{r:?}");
        }
        assert!(relax.variance < reinforce.variance, "{relax:?} vs {reinforce:?}");
        let (hot, cold) = (m(Estimator::GumbelSoft(3.0)), m(Estimator::GumbelSoft(0.1)));
        assert!(hot.bias > 4.0 * hot.noise && hot.bias > cold.bias, "{hot:?} vs {cold:?}");
        assert!(cold.variance > hot.variance, "{hot:?} vs {cold:?}");
    }
}
