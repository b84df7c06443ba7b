//! The macro space: a chain of `L` positions at a fixed width, each one of
//! `K` ops, with fixed down-sampling points, a stem and a classifier head.
//! The `L = 20`, `K = 7` sequence problem is an instance.
//!
//! ```text
//! stem (conv3×3 → BN → ReLU) → pos0 → … → [reduce] → … → [reduce] → … → pos{L-1}
//!      → global average pool → linear
//! ```
//! Ops (option names): `conv3x3`, `conv5x5` (conv → BN → ReLU), `sep3x3`,
//! `sep5x5` (depthwise conv → pointwise conv → BN → ReLU), `dil3x3` (3×3
//! conv, dilation 2 → BN → ReLU), `maxpool3x3`, `avgpool3x3`, `identity`.
//! A reduction (`reduce1`, `reduce2`, …) is a fixed stride-2 conv3×3 → BN →
//! ReLU that doubles the channels.

use archsearch_core::{Architecture, Space};
use tch::nn::Path;
use tch::Tensor;

use super::{scaled, IoShape, Network, Scale};
use crate::nn::{BatchNorm, Conv2d, ConvSpec, InitRng, Linear};
use crate::TrainError;

/// The op names the macro network knows.
pub const OPS: [&str; 8] = ["conv3x3", "conv5x5", "sep3x3", "sep5x5", "dil3x3", "maxpool3x3", "avgpool3x3", "identity"];

pub fn check_space(space: &Space) -> Result<(), TrainError> {
    for d in space.decisions() {
        for o in &d.options {
            if !OPS.contains(&o.as_str()) {
                return Err(TrainError::Config(format!(
                    "position `{}`: option `{o}` is not a macro op (known: {})",
                    d.name,
                    OPS.join(", ")
                )));
            }
        }
    }
    Ok(())
}

enum Op {
    Conv { conv: Conv2d, bn: BatchNorm },
    Sep { dw: Conv2d, pw: Conv2d, bn: BatchNorm },
    MaxPool,
    AvgPool,
    Identity,
}

impl Op {
    fn new(p: &Path, rng: &mut InitRng, name: &str, c: i64) -> Op {
        let conv = |p: &Path, rng: &mut InitRng, k, dilation| {
            let spec = ConvSpec { padding: dilation * (k / 2), dilation, bias: false, ..ConvSpec::new(c, c, k) };
            Op::Conv { conv: Conv2d::new(&(p / "conv"), rng, spec), bn: BatchNorm::new(&(p / "bn"), c) }
        };
        let sep = |p: &Path, rng: &mut InitRng, k| {
            let dw = Conv2d::new(&(p / "dw"), rng, ConvSpec { groups: c, bias: false, ..ConvSpec::new(c, c, k) });
            let pw = Conv2d::new(&(p / "pw"), rng, ConvSpec { bias: false, ..ConvSpec::new(c, c, 1) });
            Op::Sep { dw, pw, bn: BatchNorm::new(&(p / "bn"), c) }
        };
        match name {
            "conv3x3" => conv(p, rng, 3, 1),
            "conv5x5" => conv(p, rng, 5, 1),
            "dil3x3" => conv(p, rng, 3, 2),
            "sep3x3" => sep(p, rng, 3),
            "sep5x5" => sep(p, rng, 5),
            "maxpool3x3" => Op::MaxPool,
            "avgpool3x3" => Op::AvgPool,
            _ => Op::Identity,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Op::Conv { conv, bn } => bn.forward_t(&conv.forward(x), train).relu(),
            Op::Sep { dw, pw, bn } => bn.forward_t(&pw.forward(&dw.forward(x)), train).relu(),
            Op::MaxPool => x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false),
            Op::AvgPool => x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>),
            Op::Identity => x.shallow_clone(),
        }
    }
}

struct Reduce {
    conv: Conv2d,
    bn: BatchNorm,
}

/// The fixed shape of a macro network.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub channels: i64,
    pub reductions: Option<&'a [usize]>,
    pub stem_stride: i64,
}

/// The positions before which a chain of `l` positions reduces (in
/// order): `reductions`, or by default one and two thirds of the way.
pub fn reduction_positions(l: usize, reductions: Option<&[usize]>) -> Vec<usize> {
    let default = [l / 3, 2 * l / 3];
    let mut r: Vec<usize> = reductions.map(|r| r.to_vec()).unwrap_or_else(|| default.iter().copied().filter(|&r| r > 0).collect());
    r.retain(|&p| p < l);
    r.sort_unstable();
    r.dedup();
    r
}

pub struct MacroNet {
    stem: (Conv2d, BatchNorm),
    /// Per position: an optional reduction before it, then its op(s).
    layers: Vec<(Option<Reduce>, Vec<Op>)>,
    head: Linear,
}

impl MacroNet {
    pub fn new(
        root: &Path,
        rng: &mut InitRng,
        space: &Space,
        arch: &Architecture,
        io: IoShape,
        scale: Scale,
        shape: Shape<'_>,
    ) -> Result<Self, TrainError> {
        let Shape { channels, reductions, stem_stride } = shape;
        check_space(space)?;
        let reductions = reduction_positions(space.len(), reductions);
        let mut c = scaled(channels, scale.width);
        let stem = (
            Conv2d::new(
                &(root / "stem" / "conv"),
                rng,
                ConvSpec { stride: stem_stride.max(1), bias: false, ..ConvSpec::new(io.channels, c, 3) },
            ),
            BatchNorm::new(&(root / "stem" / "bn"), c),
        );
        let mut layers = Vec::with_capacity(space.len());
        let mut n_reduce = 0;
        for (i, d) in space.decisions().iter().enumerate() {
            let reduce = if reductions.contains(&i) {
                n_reduce += 1;
                let p = root / format!("reduce{n_reduce}");
                let spec = ConvSpec { stride: 2, bias: false, ..ConvSpec::new(c, 2 * c, 3) };
                let r = Reduce { conv: Conv2d::new(&(&p / "conv"), rng, spec), bn: BatchNorm::new(&(&p / "bn"), 2 * c) };
                c *= 2;
                Some(r)
            } else {
                None
            };
            let op_name = &d.options[arch.choices[i]];
            let pos = root / format!("pos{i}");
            let mut ops = vec![Op::new(&pos, rng, op_name, c)];
            for r in 1..scale.repeats.max(1) {
                ops.push(Op::new(&(&pos / format!("rep{r}")), rng, op_name, c));
            }
            layers.push((reduce, ops));
        }
        let head = Linear::new(&(root / "head"), rng, c, io.classes);
        Ok(MacroNet { stem, layers, head })
    }
}

impl Network for MacroNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = self.stem.1.forward_t(&self.stem.0.forward(x), train).relu();
        for (reduce, ops) in &self.layers {
            if let Some(r) = reduce {
                x = r.bn.forward_t(&r.conv.forward(&x), train).relu();
            }
            for op in ops {
                x = op.forward_t(&x, train);
            }
        }
        self.head.forward(&x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
    }
}
