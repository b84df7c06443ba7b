//! Networks built from architectures. Every weight is named by the position
//! that owns it (`pos3.conv.weight`, `pos2.layer1.linear.bias`: the position
//! is the decision's index in the space), or is shared by every
//! architecture (`stem.…`, `reduce1.…`, `head.…`), so one position's weights
//! can be copied between two networks that agree at that position. Which
//! position owns a tensor is read by [`crate::mixing::ownership`].

pub mod macro_net;
pub mod mlp;
pub mod nb201;
pub mod reference;

use archsearch_core::{Architecture, Space};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::nn::InitRng;
use crate::TrainError;

/// A network: one forward pass, in training or evaluation mode.
pub trait Network: Send {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor;
}

/// A network and the store that names its tensors.
pub struct Model {
    pub vs: VarStore,
    pub net: Box<dyn Network>,
}

/// Which family of networks, and its fixed (not searched) settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NetConfig {
    /// A chain of searched ops (see [`macro_net`]).
    Macro {
        /// Channels after the stem (before the width multiplier).
        #[serde(default = "default_channels")]
        channels: i64,
        /// Positions before which the resolution halves and channels double
        /// (default: at one and two thirds of the chain).
        #[serde(default)]
        reductions: Option<Vec<usize>>,
        /// Stride of the stem convolution (2 halves the resolution up front).
        #[serde(default = "one")]
        stem_stride: i64,
    },
    /// The NAS-Bench-201 cell network (see [`nb201`]).
    Nb201 {
        /// Channels of the first stage (NAS-Bench-201: 16).
        #[serde(default = "default_channels")]
        channels: i64,
        /// Cells per stage (NAS-Bench-201: 5).
        #[serde(default = "five")]
        cells: usize,
    },
    /// A multi-layer perceptron (see [`mlp`]).
    Mlp,
    /// The fixed reference CNN of the benchmarks (the architecture is ignored).
    ReferenceCnn,
    /// The fixed reference MLP of the benchmarks (the architecture is ignored).
    ReferenceMlp,
}

fn default_channels() -> i64 {
    16
}
fn one() -> i64 {
    1
}
fn five() -> usize {
    5
}

/// Shape of the network's input and output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IoShape {
    pub channels: i64,
    pub resolution: i64,
    pub classes: i64,
}

/// The structural knobs of a fidelity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    /// Width multiplier.
    pub width: f64,
    /// Repeats of each searched layer (macro networks).
    pub repeats: usize,
}

impl NetConfig {
    /// Checks that `space` is one this network family can build.
    pub fn check_space(&self, space: &Space) -> Result<(), TrainError> {
        match self {
            NetConfig::Macro { .. } => macro_net::check_space(space),
            NetConfig::Mlp => mlp::check_space(space),
            NetConfig::Nb201 { .. } => nb201::check_space(space),
            NetConfig::ReferenceCnn | NetConfig::ReferenceMlp => Ok(()),
        }
    }

    /// Builds the network of `arch` with freshly initialised weights drawn from `seed`.
    pub fn build(
        &self,
        space: &Space,
        arch: &Architecture,
        io: IoShape,
        scale: Scale,
        device: Device,
        seed: u64,
    ) -> Result<Model, TrainError> {
        let vs = VarStore::new(device);
        let mut rng = InitRng::seed_from_u64(seed);
        let root = vs.root();
        let net: Box<dyn Network> = match self {
            NetConfig::Macro { channels, reductions, stem_stride } => Box::new(macro_net::MacroNet::new(
                &root,
                &mut rng,
                space,
                arch,
                io,
                scale,
                macro_net::Shape { channels: *channels, reductions: reductions.as_deref(), stem_stride: *stem_stride },
            )?),
            NetConfig::Mlp => Box::new(mlp::Mlp::new(&root, &mut rng, space, arch, io, scale)?),
            NetConfig::Nb201 { channels, cells } => {
                Box::new(nb201::Nb201Net::new(&root, &mut rng, space, arch, io, scale, *channels, *cells)?)
            }
            NetConfig::ReferenceCnn => Box::new(reference::Cnn::new(&root, &mut rng, io)),
            NetConfig::ReferenceMlp => Box::new(reference::Mlp::new(&root, &mut rng, io)),
        };
        Ok(Model { vs, net })
    }
}

pub(crate) fn scaled(c: i64, width: f64) -> i64 {
    ((c as f64 * width).round() as i64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use archsearch_core::space::SpaceSpec;
    use tch::Kind;

    fn io() -> IoShape {
        IoShape { channels: 1, resolution: 8, classes: 10 }
    }
    const ONE: Scale = Scale { width: 1.0, repeats: 1 };

    #[test]
    fn macro_weights_are_named_by_position_and_initialised_as_pytorch() {
        let space = toml::from_str::<SpaceSpec>("kind = \"sequence\"\nlength = 3\noptions = [\"conv3x3\", \"sep5x5\", \"identity\"]\n")
            .unwrap()
            .build()
            .unwrap();
        let net = NetConfig::Macro { channels: 8, reductions: None, stem_stride: 1 };
        let m = net.build(&space, &Architecture::new(vec![0, 1, 2]), io(), ONE, Device::Cpu, 0).unwrap();
        let vars = m.vs.variables();
        for name in ["pos0.conv.weight", "pos0.bn.running_var", "pos1.dw.weight", "pos1.pw.weight", "reduce1.conv.weight", "head.bias"] {
            assert!(vars.contains_key(name), "{name} missing: {:?}", vars.keys().collect::<Vec<_>>());
        }
        assert!(!vars.keys().any(|k| k.starts_with("pos2.")), "identity owns no weights");
        // PyTorch's Conv2d init: uniform in ±1/sqrt(fan_in), std = bound/√3.
        let w = &vars["pos0.conv.weight"];
        let bound = 1.0 / ((8 * 9) as f64).sqrt();
        assert!(w.abs().max().double_value(&[]) <= bound + 1e-7);
        let std = w.std(true).double_value(&[]);
        assert!((std - bound / 3f64.sqrt()).abs() < 0.1 * bound, "std {std}");
        // Same seed, same weights; another seed, others.
        let again = net.build(&space, &Architecture::new(vec![0, 1, 2]), io(), ONE, Device::Cpu, 0).unwrap();
        assert!(again.vs.variables()["pos0.conv.weight"].equal(w));
        let other = net.build(&space, &Architecture::new(vec![0, 1, 2]), io(), ONE, Device::Cpu, 1).unwrap();
        assert!(!other.vs.variables()["pos0.conv.weight"].equal(w));
        let y = m.net.forward_t(&Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu)), true);
        assert_eq!(y.size(), vec![2, 10]);
    }

    #[test]
    fn width_and_repeats_scale_the_macro_network() {
        let space = Space::sequence(2, 1);
        let space = Space::new(
            archsearch_core::SpaceKind::Sequence,
            space.decisions().iter().map(|d| archsearch_core::Decision { name: d.name.clone(), options: vec!["conv3x3".into()] }).collect(),
            vec![],
        )
        .unwrap();
        let net = NetConfig::Macro { channels: 8, reductions: Some(vec![]), stem_stride: 1 };
        let arch = Architecture::new(vec![0, 0]);
        let m = net.build(&space, &arch, io(), Scale { width: 0.5, repeats: 2 }, Device::Cpu, 0).unwrap();
        let vars = m.vs.variables();
        assert_eq!(vars["pos0.conv.weight"].size(), vec![4, 4, 3, 3]);
        assert!(vars.contains_key("pos1.rep1.conv.weight"));
    }

    #[test]
    fn unknown_macro_ops_and_malformed_mlp_spaces_are_rejected() {
        let bad = toml::from_str::<SpaceSpec>("kind = \"sequence\"\nlength = 2\noptions = [\"conv3x3\", \"conv7x7\"]\n")
            .unwrap()
            .build()
            .unwrap();
        let e = NetConfig::Macro { channels: 8, reductions: None, stem_stride: 1 }.check_space(&bad).unwrap_err();
        assert!(e.to_string().contains("conv7x7"), "{e}");
        let e = NetConfig::Mlp.check_space(&bad).unwrap_err();
        assert!(e.to_string().contains("layer<N>"), "{e}");
    }

    #[test]
    fn nb201_cell_network_builds_and_names_weights_by_edge() {
        let space = Space::nb201();
        let arch = space.parse("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|nor_conv_1x1~0|avg_pool_3x3~1|nor_conv_3x3~2|").unwrap();
        let net = NetConfig::Nb201 { channels: 4, cells: 1 };
        let m = net.build(&space, &arch, IoShape { channels: 3, resolution: 8, classes: 10 }, ONE, Device::Cpu, 0).unwrap();
        let vars = m.vs.variables();
        for name in [
            "pos0.stage0.cell0.conv.weight",
            "pos3.stage2.cell0.bn.running_mean",
            "pos5.stage1.cell0.conv.weight",
            "reduce1.shortcut.weight",
        ] {
            assert!(vars.contains_key(name), "{name}: {:?}", vars.keys().collect::<Vec<_>>());
        }
        assert_eq!(vars["pos0.stage2.cell0.conv.weight"].size(), vec![16, 16, 3, 3]);
        assert!(!vars.keys().any(|k| k.starts_with("pos1.") || k.starts_with("pos2.") || k.starts_with("pos4.")));
        let y = m.net.forward_t(&Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu)), true);
        assert_eq!(y.size(), vec![2, 10]);
    }

    #[test]
    fn mlp_builds_from_its_decisions() {
        let space = toml::from_str::<SpaceSpec>(
            r#"kind = "custom"
decisions = [
  { name = "layer0.width", options = ["32", "64"] },
  { name = "layer0.act", options = ["relu", "gelu"] },
  { name = "layer1.width", options = ["32", "64"] },
  { name = "layer1.residual", options = ["no", "yes"] },
  { name = "layer1.norm", options = ["none", "layernorm"] },
]"#,
        )
        .unwrap()
        .build()
        .unwrap();
        let m = NetConfig::Mlp.build(&space, &Architecture::new(vec![1, 1, 1, 1, 1]), io(), ONE, Device::Cpu, 0).unwrap();
        let vars = m.vs.variables();
        // Named by their owning position: the layer's width (linear) and norm (LayerNorm) decisions.
        assert_eq!(vars["pos0.layer0.linear.weight"].size(), vec![64, 64]);
        assert_eq!(vars["pos2.layer1.linear.weight"].size(), vec![64, 64]);
        assert_eq!(vars["pos4.layer1.norm.weight"].size(), vec![64]);
        assert_eq!(vars["head.weight"].size(), vec![10, 64]);
        assert_eq!(vars.len(), 2 + 2 + 2 + 2, "{:?}", vars.keys().collect::<Vec<_>>());
        let y = m.net.forward_t(&Tensor::zeros([3, 1, 8, 8], (Kind::Float, Device::Cpu)), true);
        assert_eq!(y.size(), vec![3, 10]);
        // Layers are named by the number in their decisions, not by their rank.
        let sparse = toml::from_str::<SpaceSpec>("kind = \"custom\"\ndecisions = [{ name = \"layer3.width\", options = [\"8\"] }]\n")
            .unwrap()
            .build()
            .unwrap();
        let m = NetConfig::Mlp.build(&sparse, &Architecture::new(vec![0]), io(), ONE, Device::Cpu, 0).unwrap();
        assert!(m.vs.variables().contains_key("pos0.layer3.linear.weight"));
        // A width decision given twice, or an unknown key, is refused.
        for bad in [
            "[{ name = \"layer0.width\", options = [\"8\"] }, { name = \"layer0.width\", options = [\"16\"] }]",
            "[{ name = \"layer0.width\", options = [\"8\"] }, { name = \"layer0.depth\", options = [\"8\"] }]",
        ] {
            let spec = toml::from_str::<SpaceSpec>(&format!("kind = \"custom\"\ndecisions = {bad}\n")).unwrap();
            let rejected = match spec.build() {
                Err(_) => true,
                Ok(space) => NetConfig::Mlp.check_space(&space).is_err(),
            };
            assert!(rejected, "{bad}");
        }
    }

    use crate::mixing::{self, Ownership, ShrinkPerturb};
    use std::collections::{BTreeMap, BTreeSet};

    /// A small network of each searched family, with two architectures of it.
    struct Family {
        name: &'static str,
        space: Space,
        net: NetConfig,
        io: IoShape,
        scale: Scale,
        bases: [Architecture; 2],
        /// Whether a tensor's shape depends only on its owner's option (not
        /// so for the MLP: a layer's input width is the previous layer's width).
        shapes_local: bool,
    }

    fn spec(text: &str) -> Space {
        toml::from_str::<SpaceSpec>(text).unwrap().build().unwrap()
    }

    fn families() -> Vec<Family> {
        let nb201 = Space::nb201();
        let cell = |s: &str| nb201.parse(s).unwrap();
        vec![
            Family {
                name: "macro",
                space: spec(&format!("kind = \"sequence\"\nlength = 4\noptions = {:?}\n", macro_net::OPS)),
                net: NetConfig::Macro { channels: 4, reductions: None, stem_stride: 1 },
                io: IoShape { channels: 1, resolution: 8, classes: 10 },
                scale: Scale { width: 1.0, repeats: 2 },
                bases: [Architecture::new(vec![0, 1, 2, 3]), Architecture::new(vec![5, 4, 7, 3])],
                shapes_local: true,
            },
            Family {
                name: "nb201",
                bases: [
                    cell("|nor_conv_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"),
                    cell("|none~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|nor_conv_3x3~0|skip_connect~1|none~2|"),
                ],
                space: nb201.clone(),
                net: NetConfig::Nb201 { channels: 2, cells: 1 },
                io: IoShape { channels: 3, resolution: 8, classes: 10 },
                scale: ONE,
                shapes_local: true,
            },
            Family {
                name: "mlp",
                space: spec(
                    r#"kind = "custom"
decisions = [
  { name = "layer0.width", options = ["8", "16"] },
  { name = "layer0.act", options = ["relu", "gelu"] },
  { name = "layer0.norm", options = ["none", "layernorm"] },
  { name = "layer1.width", options = ["8", "16"] },
  { name = "layer1.residual", options = ["no", "yes"] },
  { name = "layer1.norm", options = ["none", "layernorm"] },
]"#,
                ),
                net: NetConfig::Mlp,
                io: io(),
                scale: ONE,
                bases: [Architecture::new(vec![0, 0, 0, 0, 0, 1]), Architecture::new(vec![0, 1, 1, 0, 1, 0])],
                shapes_local: false,
            },
        ]
    }

    fn tensors(f: &Family, arch: &Architecture, seed: u64) -> (BTreeMap<String, Tensor>, BTreeSet<String>) {
        let m = f.net.build(&f.space, arch, f.io, f.scale, Device::Cpu, seed).unwrap();
        let vars: BTreeMap<String, Tensor> = m.vs.variables().into_iter().collect();
        let trainable = vars.iter().filter(|(_, t)| t.requires_grad()).map(|(k, _)| k.clone()).collect();
        (vars.into_iter().map(|(k, t)| (k, t.detach())).collect(), trainable)
    }

    /// The owner of `name` as mixing reads it; fails on a name that is
    /// neither owned nor shared, or owned by a position the space lacks.
    fn owner_of(f: &Family, name: &str) -> Ownership {
        match mixing::ownership(name) {
            Some(Ownership::Position(i)) => {
                assert!(i < f.space.len(), "{}: `{name}` is owned by position {i}; the space has {}", f.name, f.space.len());
                Ownership::Position(i)
            }
            Some(Ownership::Shared) => Ownership::Shared,
            None => panic!("{}: `{name}` is owned by no position and is not a shared (stem, reduce, head) tensor", f.name),
        }
    }

    /// Every tensor of every family is owned by exactly one position of the
    /// space or is shared (stem, reductions, head), as `mixing` reads names;
    /// and the owner is the position whose option decides it: changing one
    /// position's option adds or removes only tensors that position owns
    /// (and, where shapes are local, reshapes none of another's), while the
    /// shared tensors are the same for every architecture.
    #[test]
    fn every_trainable_tensor_has_an_owning_position() {
        for f in families() {
            let mut owning = BTreeSet::new();
            for base in &f.bases {
                let (vars, trainable) = tensors(&f, base, 0);
                assert!(!trainable.is_empty());
                let owners: BTreeMap<&String, Ownership> = vars.keys().map(|k| (k, owner_of(&f, k))).collect();
                assert!(trainable.iter().any(|k| owners[k] == Ownership::Shared), "{}: no shared trainable tensor", f.name);
                assert!(trainable.iter().any(|k| owners[k] != Ownership::Shared), "{}: no owned trainable tensor", f.name);
                let shared = |v: &BTreeMap<String, Tensor>| {
                    v.keys().filter(|k| mixing::ownership(k) == Some(Ownership::Shared)).cloned().collect::<Vec<_>>()
                };
                for i in 0..f.space.len() {
                    for o in 0..f.space.decisions()[i].options.len() {
                        let mut choices = base.choices.clone();
                        choices[i] = o;
                        let (other, other_trainable) = tensors(&f, &Architecture::new(choices), 0);
                        for k in other.keys() {
                            if let Ownership::Position(p) = owner_of(&f, k) {
                                owning.insert(p);
                            }
                        }
                        assert_eq!(shared(&vars), shared(&other), "{}: position {i} changed the shared tensors", f.name);
                        for k in vars.keys().chain(other.keys()) {
                            let here = vars.get(k).map(|t| t.size());
                            let there = other.get(k).map(|t| t.size());
                            let ours = owner_of(&f, k) == Ownership::Position(i);
                            if here.is_none() || there.is_none() {
                                assert!(ours, "{}: option {o} at position {i} adds or removes `{k}`, owned by another position", f.name);
                            } else if f.shapes_local && !ours && owner_of(&f, k) != Ownership::Shared {
                                assert_eq!(here, there, "{}: option {o} at position {i} reshapes `{k}`", f.name);
                            }
                            if here.is_some() && there.is_some() {
                                assert_eq!(trainable.contains(k), other_trainable.contains(k), "{}: `{k}`", f.name);
                            }
                        }
                    }
                }
            }
            // Every position with an option that has weights owns some tensor.
            let expected: BTreeSet<usize> = match f.name {
                // `act` and `residual` have no weights.
                "mlp" => [0, 2, 3, 5].into(),
                _ => (0..f.space.len()).collect(),
            };
            assert_eq!(owning, expected, "{}", f.name);
        }
    }

    /// PBT-NAS mixing on real networks of every family: each donated
    /// position's tensors are the donor's, shrink-perturbed (trained ones) or
    /// copied (statistics); everything else is the fitter's. The MLP child
    /// takes a LayerNorm only its donor has: the norm belongs to the norm
    /// position, not to the layer's width.
    #[test]
    fn real_networks_mix_position_by_position() {
        for f in families() {
            let [a, b] = &f.bases;
            let from_donor: Vec<bool> = (0..f.space.len()).map(|i| i % 2 == 1 || (f.name == "mlp" && i == 2)).collect();
            let child = Architecture::new((0..f.space.len()).map(|i| if from_donor[i] { b.choices[i] } else { a.choices[i] }).collect());
            let (fitter, _) = tensors(&f, a, 1);
            let (donor, _) = tensors(&f, b, 2);
            let (fresh, trainable) = tensors(&f, &child, 3);
            let mixed = mixing::mix(&fresh, &trainable, &fitter, &donor, &from_donor, ShrinkPerturb::PAPER)
                .unwrap_or_else(|e| panic!("{}: {e}", f.name));
            assert_eq!(mixed.tensors.keys().collect::<Vec<_>>(), fresh.keys().collect::<Vec<_>>());
            let mut donated = 0;
            for (k, t) in &mixed.tensors {
                match owner_of(&f, k) {
                    Ownership::Position(i) if from_donor[i] => {
                        donated += 1;
                        if trainable.contains(k) {
                            let expected = &donor[k] * 0.4 + &fresh[k] * 0.1;
                            assert!(t.allclose(&expected, 1e-6, 1e-7, false), "{}: `{k}` is not 0.4 donor + 0.1 fresh", f.name);
                        } else {
                            assert!(t.equal(&donor[k]), "{}: `{k}` is not the donor's", f.name);
                        }
                    }
                    _ => assert!(t.equal(&fitter[k]), "{}: `{k}` is not the fitter's", f.name),
                }
            }
            assert!(donated > 0, "{}: no tensor was donated", f.name);
            if f.name == "mlp" {
                assert!(mixed.tensors.contains_key("pos2.layer0.norm.weight") && !fitter.contains_key("pos2.layer0.norm.weight"));
            }
        }
    }
}
