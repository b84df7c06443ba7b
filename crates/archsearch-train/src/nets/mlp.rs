//! The MLP space. Each layer `i` is described by decisions named
//! `layer{i}.width` (required; options are numbers), `layer{i}.act` (`relu`,
//! `gelu`, `tanh`, `sigmoid`; default `relu`), `layer{i}.residual` (`no`,
//! `yes`: adds the layer's input when the widths agree) and `layer{i}.norm`
//! (`none`, `layernorm`).
//!
//! Every weight is named by the position (decision index) that owns it, as in
//! the other families, so [`crate::mixing`] can move it with its position:
//! layer `i`'s linear belongs to its `layer{i}.width` position and its
//! LayerNorm to its `layer{i}.norm` position (the decision that makes the
//! tensor exist), e.g. with decisions `layer0.width, layer0.act,
//! layer1.width, layer1.norm` the tensors are `pos0.layer0.linear.*`,
//! `pos2.layer1.linear.*` and `pos3.layer1.norm.*`. `act` and `residual`
//! positions own no weights. The classifier (`head.*`) is shared: it belongs
//! to no position.

use std::collections::BTreeMap;

use archsearch_core::{Architecture, Space};
use tch::nn::Path;
use tch::Tensor;

use super::{scaled, IoShape, Network, Scale};
use crate::nn::{InitRng, LayerNorm, Linear};
use crate::TrainError;

#[derive(Default, Clone)]
struct LayerChoice {
    /// `N` of the decisions' `layer<N>.` prefix.
    number: usize,
    width: Option<i64>,
    /// Index of the `layer<N>.width` decision: the position owning the linear.
    width_pos: Option<usize>,
    /// Index of the `layer<N>.norm` decision: the position owning the LayerNorm.
    norm_pos: Option<usize>,
    act: String,
    residual: bool,
    norm: bool,
}

fn layers(space: &Space, arch: Option<&Architecture>) -> Result<Vec<LayerChoice>, TrainError> {
    let mut out: BTreeMap<usize, LayerChoice> = BTreeMap::new();
    let bad = |m: String| TrainError::Config(m);
    for (i, d) in space.decisions().iter().enumerate() {
        let (layer, key) = d
            .name
            .strip_prefix("layer")
            .and_then(|s| s.split_once('.'))
            .and_then(|(n, k)| n.parse::<usize>().ok().map(|n| (n, k)))
            .ok_or_else(|| bad(format!("MLP decision `{}` is not named `layer<N>.<width|act|residual|norm>`", d.name)))?;
        if !["width", "act", "residual", "norm"].contains(&key) {
            return Err(bad(format!("MLP decision `{}` is not named `layer<N>.<width|act|residual|norm>`", d.name)));
        }
        let l = out.entry(layer).or_insert_with(|| LayerChoice { number: layer, act: "relu".into(), ..Default::default() });
        let duplicate = || bad(format!("MLP decision `{}` appears twice", d.name));
        match key {
            "width" if l.width_pos.replace(i).is_some() => return Err(duplicate()),
            "norm" if l.norm_pos.replace(i).is_some() => return Err(duplicate()),
            _ => {}
        }
        let choices: Vec<&String> = match arch {
            Some(a) => vec![&d.options[a.choices[i]]],
            None => d.options.iter().collect(),
        };
        for opt in choices {
            match key {
                "width" => l.width = Some(opt.parse().map_err(|_| bad(format!("`{}`: width `{opt}` is not a number", d.name)))?),
                "act" if ["relu", "gelu", "tanh", "sigmoid"].contains(&opt.as_str()) => l.act = opt.clone(),
                "residual" if opt == "yes" || opt == "no" => l.residual = opt == "yes",
                "norm" if opt == "none" || opt == "layernorm" => l.norm = opt == "layernorm",
                _ => return Err(bad(format!("`{}`: unknown option `{opt}`", d.name))),
            }
        }
    }
    let v: Vec<LayerChoice> = out.into_values().collect();
    if let Some(l) = v.iter().find(|l| l.width.is_none()) {
        let n = l.number;
        return Err(bad(format!("MLP layer {n} has no `layer{n}.width` decision")));
    }
    Ok(v)
}

pub fn check_space(space: &Space) -> Result<(), TrainError> {
    layers(space, None).map(|_| ())
}

struct Layer {
    linear: Linear,
    norm: Option<LayerNorm>,
    act: String,
    residual: bool,
}

pub struct Mlp {
    layers: Vec<Layer>,
    head: Linear,
}

/// One layer of an architecture, resolved: its width (scaled), the
/// positions owning its linear and (if it has one) its LayerNorm, its
/// activation, and whether its residual applies (only where widths agree).
#[derive(serde::Serialize)]
pub struct Resolved {
    pub number: usize,
    pub width: i64,
    pub width_pos: usize,
    pub norm_pos: Option<usize>,
    pub act: String,
    pub residual: bool,
}

/// The layers of `arch`, as both [`Mlp`] and its exported PyTorch twin build them.
pub fn describe(space: &Space, arch: &Architecture, io: IoShape, scale: Scale) -> Result<Vec<Resolved>, TrainError> {
    let mut cin = io.channels * io.resolution * io.resolution;
    let mut out = Vec::new();
    for l in layers(space, Some(arch))? {
        let (Some(width), Some(width_pos)) = (l.width, l.width_pos) else {
            return Err(TrainError::Config(format!("MLP layer {} has no width", l.number)));
        };
        let w = scaled(width, scale.width);
        // A LayerNorm exists only where a `layer<N>.norm` decision chose it.
        let norm_pos = l.norm_pos.filter(|_| l.norm);
        out.push(Resolved { number: l.number, width: w, width_pos, norm_pos, act: l.act, residual: l.residual && cin == w });
        cin = w;
    }
    Ok(out)
}

impl Mlp {
    pub fn new(root: &Path, rng: &mut InitRng, space: &Space, arch: &Architecture, io: IoShape, scale: Scale) -> Result<Self, TrainError> {
        let mut cin = io.channels * io.resolution * io.resolution;
        let mut out = Vec::new();
        for l in describe(space, arch, io, scale)? {
            let layer = format!("layer{}", l.number);
            let linear = Linear::new(&(root / format!("pos{}", l.width_pos) / layer.as_str() / "linear"), rng, cin, l.width);
            let norm = l.norm_pos.map(|p| LayerNorm::new(&(root / format!("pos{p}") / layer.as_str() / "norm"), l.width));
            out.push(Layer { linear, norm, act: l.act, residual: l.residual });
            cin = l.width;
        }
        Ok(Mlp { layers: out, head: Linear::new(&(root / "head"), rng, cin, io.classes) })
    }
}

impl Network for Mlp {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        let mut x = x.flatten(1, -1);
        for l in &self.layers {
            let mut y = l.linear.forward(&x);
            if let Some(n) = &l.norm {
                y = n.forward(&y);
            }
            y = match l.act.as_str() {
                "gelu" => y.gelu("none"),
                "tanh" => y.tanh(),
                "sigmoid" => y.sigmoid(),
                _ => y.relu(),
            };
            x = if l.residual { y + x } else { y };
        }
        self.head.forward(&x)
    }
}
