//! Controller policies `p_α(h)` over the decisions of a space.
//!
//! * [`PolicyKind::Independent`]: one vector of logits per decision, the
//!   decisions independent (the REINFORCE baseline of NAS-Bench-201).
//! * [`PolicyKind::Lstm`]: the sequential controller of Zoph & Le (2017): an
//!   LSTM reads a learned start embedding, emits the first decision through
//!   that decision's softmax head, reads the embedding of the option it chose,
//!   emits the next decision, and so on. Every decision is thus conditioned on
//!   all the previous ones.
//!
//! Parameters are one flat `Vec<f32>`; [`Policy::log_prob`] builds tensor
//! views of it so libtorch computes the gradient for the whole vector at once.

use archsearch_core::{Architecture, Rng, Space};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    Independent,
    Lstm,
}

/// Shape of the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub kind: PolicyKind,
    /// LSTM hidden units (Zoph & Le 2017: 35).
    pub hidden: usize,
    /// LSTM layers (Zoph & Le 2017: 2).
    pub layers: usize,
    /// LSTM weights start uniform in `[-init_range, init_range]` (Zoph & Le 2017: 0.08).
    /// Independent logits start at zero (a uniform policy).
    pub init_range: f64,
}

impl PolicySpec {
    pub fn independent() -> Self {
        PolicySpec { kind: PolicyKind::Independent, hidden: 35, layers: 2, init_range: 0.08 }
    }
    pub fn lstm() -> Self {
        PolicySpec { kind: PolicyKind::Lstm, hidden: 35, layers: 2, init_range: 0.08 }
    }
}

/// A controller: its shape, the space's option counts, and its parameters.
#[derive(Debug, Clone)]
pub struct Policy {
    spec: PolicySpec,
    num_options: Vec<usize>,
    /// Start of each decision's options in the concatenated option list.
    offsets: Vec<usize>,
    total_options: usize,
    pub params: Vec<f32>,
}

/// Tensor views of the flat parameters.
struct Views {
    /// Independent: all logits, `[S]` (S = options of all decisions).
    logits: Option<Tensor>,
    /// LSTM: per layer `w_ih, w_hh, b_ih, b_hh`, in libtorch's order.
    lstm: Vec<Tensor>,
    /// LSTM: row 0 is the start input, row `1 + offset + k` option `k`'s embedding.
    emb: Option<Tensor>,
    head_w: Option<Tensor>,
    head_b: Option<Tensor>,
}

impl Policy {
    pub fn new(space: &Space, spec: PolicySpec, rng: &mut Rng) -> Self {
        let num_options = space.num_options();
        let mut offsets = Vec::with_capacity(num_options.len());
        let mut total = 0;
        for k in &num_options {
            offsets.push(total);
            total += k;
        }
        let mut p = Policy { spec, num_options, offsets, total_options: total, params: Vec::new() };
        let n = p.num_params();
        p.params = match p.spec.kind {
            PolicyKind::Independent => vec![0.0; n],
            PolicyKind::Lstm => {
                let r = p.spec.init_range;
                (0..n).map(|_| rng.random_range(-r..=r) as f32).collect()
            }
        };
        p
    }

    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    fn layer_params(&self) -> usize {
        let h = self.spec.hidden;
        2 * 4 * h * h + 2 * 4 * h
    }

    pub fn num_params(&self) -> usize {
        let h = self.spec.hidden;
        match self.spec.kind {
            PolicyKind::Independent => self.total_options,
            PolicyKind::Lstm => self.spec.layers * self.layer_params() + (1 + self.total_options) * h + self.total_options * (h + 1),
        }
    }

    fn views(&self, flat: &Tensor) -> Views {
        let h = self.spec.hidden as i64;
        let s = self.total_options as i64;
        let mut off = 0i64;
        let mut take = |shape: &[i64]| {
            let n: i64 = shape.iter().product();
            let t = flat.narrow(0, off, n).view(shape);
            off += n;
            t
        };
        match self.spec.kind {
            PolicyKind::Independent => Views { logits: Some(take(&[s])), lstm: Vec::new(), emb: None, head_w: None, head_b: None },
            PolicyKind::Lstm => {
                let mut lstm = Vec::new();
                for _ in 0..self.spec.layers {
                    lstm.extend([take(&[4 * h, h]), take(&[4 * h, h]), take(&[4 * h]), take(&[4 * h])]);
                }
                let emb = take(&[1 + s, h]);
                let head_w = take(&[s, h]);
                let head_b = take(&[s]);
                Views { logits: None, lstm, emb: Some(emb), head_w: Some(head_w), head_b: Some(head_b) }
            }
        }
    }

    /// Samples an architecture; returns its choices and their total
    /// log-probability. Runs in plain Rust (no autograd is needed to sample,
    /// and libtorch's per-op overhead dominates at this size); a test checks
    /// it against the libtorch forward of [`Policy::log_prob`].
    pub fn sample(&self, rng: &mut Rng) -> (Vec<usize>, f64) {
        let mut choices = Vec::with_capacity(self.num_options.len());
        let mut logp = 0.0;
        match self.spec.kind {
            PolicyKind::Independent => {
                for (t, &k) in self.num_options.iter().enumerate() {
                    let o = self.offsets[t];
                    let (c, lp) = sample_logits(&self.params[o..o + k], rng);
                    choices.push(c);
                    logp += lp;
                }
            }
            PolicyKind::Lstm => {
                let h = self.spec.hidden;
                let layers = self.spec.layers;
                let lp = self.layer_params();
                let emb_off = layers * lp;
                let head_w_off = emb_off + (1 + self.total_options) * h;
                let head_b_off = head_w_off + self.total_options * h;
                let p = &self.params;
                let mut hs = vec![vec![0f32; h]; layers];
                let mut cs = vec![vec![0f32; h]; layers];
                let mut x: Vec<f32> = p[emb_off..emb_off + h].to_vec();
                let mut gates = vec![0f32; 4 * h];
                let mut logits = Vec::new();
                for (t, &k) in self.num_options.iter().enumerate() {
                    for l in 0..layers {
                        let base = l * lp;
                        let (w_ih, rest) = p[base..base + lp].split_at(4 * h * h);
                        let (w_hh, rest) = rest.split_at(4 * h * h);
                        let (b_ih, b_hh) = rest.split_at(4 * h);
                        for (r, g) in gates.iter_mut().enumerate() {
                            *g = b_ih[r] + b_hh[r] + dot(&w_ih[r * h..(r + 1) * h], &x) + dot(&w_hh[r * h..(r + 1) * h], &hs[l]);
                        }
                        // libtorch's gate order: input, forget, cell, output.
                        for j in 0..h {
                            let i = sigmoid(gates[j]);
                            let f = sigmoid(gates[h + j]);
                            let g = gates[2 * h + j].tanh();
                            let o = sigmoid(gates[3 * h + j]);
                            cs[l][j] = f * cs[l][j] + i * g;
                            hs[l][j] = o * cs[l][j].tanh();
                        }
                        x.copy_from_slice(&hs[l]);
                    }
                    let o = self.offsets[t];
                    logits.clear();
                    logits.extend(
                        (0..k).map(|c| p[head_b_off + o + c] + dot(&p[head_w_off + (o + c) * h..head_w_off + (o + c + 1) * h], &x)),
                    );
                    let (c, lpc) = sample_logits(&logits, rng);
                    choices.push(c);
                    logp += lpc;
                    let e = emb_off + (1 + o + c) * h;
                    x.copy_from_slice(&p[e..e + h]);
                }
            }
        }
        (choices, logp)
    }

    /// Differentiable log-probabilities and entropies of a batch of
    /// architectures under the parameters `flat` (a tensor of `self.params`
    /// that may require grad). Returns two `[B]` tensors.
    ///
    /// All decisions are scored at once: the LSTM runs over the whole
    /// (teacher-forced) sequence in one fused call, every head's logits come
    /// from one matrix product over all `S` options, and a mask restricts each
    /// decision's softmax to its own options.
    pub fn log_prob(&self, flat: &Tensor, batch: &[&Architecture]) -> (Tensor, Tensor) {
        let v = self.views(flat);
        let (b, t, s, h) = (batch.len() as i64, self.num_options.len() as i64, self.total_options as i64, self.spec.hidden as i64);
        // Global option index of each decision, [T, B].
        let mut chosen = Vec::with_capacity((t * b) as usize);
        for (pos, off) in self.offsets.iter().enumerate() {
            chosen.extend(batch.iter().map(|a| (off + a.choices[pos]) as i64));
        }
        let logits = match self.spec.kind {
            PolicyKind::Independent => v.logits.as_ref().unwrap().view([1, 1, s]).expand([t, b, s], false),
            PolicyKind::Lstm => {
                // Inputs: the start row, then the embedding of each previous choice.
                let mut rows = vec![0i64; b as usize];
                rows.extend(chosen[..((t - 1) * b) as usize].iter().map(|g| g + 1));
                let x = v.emb.as_ref().unwrap().index_select(0, &Tensor::from_slice(&rows)).view([t, b, h]);
                let zeros = Tensor::zeros([self.spec.layers as i64, b, h], tch::kind::FLOAT_CPU);
                let (out, _, _) =
                    x.lstm(&[&zeros, &zeros], &v.lstm.iter().collect::<Vec<_>>(), true, self.spec.layers as i64, 0.0, false, false, false);
                out.matmul(&v.head_w.as_ref().unwrap().tr()) + v.head_b.as_ref().unwrap()
            }
        };
        let mut mask = vec![true; (t * s) as usize];
        for (pos, (&off, &k)) in self.offsets.iter().zip(&self.num_options).enumerate() {
            mask[pos * s as usize + off..pos * s as usize + off + k].fill(false);
        }
        let mask = Tensor::from_slice(&mask).view([t, 1, s]);
        let lsm = logits.masked_fill(&mask, f64::NEG_INFINITY).log_softmax(-1, Kind::Float);
        let idx = Tensor::from_slice(&chosen).view([t, b, 1]);
        let logp = lsm.gather(2, &idx, false).squeeze_dim(2).sum_dim_intlist(0, false, Kind::Float);
        let entropy = -(lsm.exp() * lsm.masked_fill(&mask, 0.0)).sum_dim_intlist(&[0i64, 2][..], false, Kind::Float);
        (logp, entropy)
    }

    /// Gradient of `loss_fn(log_prob, entropy)` with respect to the flat parameters.
    pub fn gradient(&self, batch: &[&Architecture], loss_fn: impl FnOnce(&Tensor, &Tensor) -> Tensor) -> Vec<f32> {
        let flat = Tensor::from_slice(&self.params).set_requires_grad(true);
        let (logp, entropy) = self.log_prob(&flat, batch);
        let loss = loss_fn(&logp, &entropy);
        loss.backward();
        Vec::try_from(flat.grad()).expect("f32 gradient")
    }

    /// Log-probabilities of a batch as plain numbers (no gradient).
    pub fn log_prob_values(&self, batch: &[&Architecture]) -> Vec<f64> {
        tch::no_grad(|| {
            let flat = Tensor::from_slice(&self.params);
            let (logp, _) = self.log_prob(&flat, batch);
            Vec::<f32>::try_from(logp).expect("f32").into_iter().map(f64::from).collect()
        })
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Samples from softmax(logits) with the strategy's generator; returns the
/// index and its log-probability.
fn sample_logits(logits: &[f32], rng: &mut Rng) -> (usize, f64) {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let u: f64 = rng.random::<f64>() * z;
    let mut acc = 0.0;
    let mut pick = logits.len() - 1;
    for (i, &l) in logits.iter().enumerate() {
        acc += (l as f64 - max).exp();
        if u < acc {
            pick = i;
            break;
        }
    }
    (pick, logits[pick] as f64 - max - z.ln())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampled_log_prob_matches_batched_log_prob() {
        for spec in [PolicySpec::independent(), PolicySpec::lstm()] {
            let space = Space::sequence(5, 3);
            let mut rng = Rng::seed_from_u64(3);
            let mut p = Policy::new(&space, spec, &mut rng);
            for x in p.params.iter_mut() {
                *x += rng.random_range(-0.5..0.5);
            }
            let samples: Vec<(Vec<usize>, f64)> = (0..4).map(|_| p.sample(&mut rng)).collect();
            let archs: Vec<Architecture> = samples.iter().map(|(c, _)| Architecture::new(c.clone())).collect();
            let refs: Vec<&Architecture> = archs.iter().collect();
            let batched = p.log_prob_values(&refs);
            for ((_, lp), b) in samples.iter().zip(batched) {
                assert!((lp - b).abs() < 1e-4, "{lp} vs {b}");
            }
        }
    }

    #[test]
    fn entropy_of_a_uniform_policy_is_sum_of_log_k() {
        let space = Space::nb201();
        let p = Policy::new(&space, PolicySpec::independent(), &mut Rng::seed_from_u64(0));
        let a = Architecture::new(vec![0; 6]);
        let flat = Tensor::from_slice(&p.params);
        let (logp, ent) = p.log_prob(&flat, &[&a]);
        let (logp, ent) = (logp.double_value(&[0]), ent.double_value(&[0]));
        assert!((ent - 6.0 * 5f64.ln()).abs() < 1e-4, "{ent}");
        assert!((logp + 6.0 * 5f64.ln()).abs() < 1e-4, "{logp}");
    }

    #[test]
    fn only_the_lstm_conditions_later_decisions_on_earlier_ones() {
        let space = Space::sequence(2, 3);
        for (spec, conditioned) in [(PolicySpec::independent(), false), (PolicySpec::lstm(), true)] {
            let mut rng = Rng::seed_from_u64(1);
            let mut p = Policy::new(&space, spec, &mut rng);
            for x in p.params.iter_mut() {
                *x += rng.random_range(-0.5..0.5);
            }
            let arch = |a: usize, b: usize| Architecture::new(vec![a, b]);
            let (a00, a01, a10, a11) = (arch(0, 0), arch(0, 1), arch(1, 0), arch(1, 1));
            let lp = p.log_prob_values(&[&a00, &a01, &a10, &a11]);
            // log p(b=0|a) - log p(b=1|a), for a = 0 and a = 1.
            let (r0, r1) = (lp[0] - lp[1], lp[2] - lp[3]);
            assert_eq!((r0 - r1).abs() > 1e-4, conditioned, "{r0} {r1}");
        }
    }
}
