//! Networks built from architectures. Every weight is named by the position
//! that owns it (`pos3.conv.weight`, `layer2.linear.bias`), so one position's
//! weights can be copied between two networks that agree at that position.

pub mod macro_net;
pub mod mlp;
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
            NetConfig::ReferenceCnn | NetConfig::ReferenceMlp => Ok(()),
        }
    }

    /// Builds the network of `arch` with freshly initialised weights drawn from `seed`.
    pub fn build(&self, space: &Space, arch: &Architecture, io: IoShape, scale: Scale, device: Device, seed: u64) -> Result<Model, TrainError> {
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
            NetConfig::ReferenceCnn => Box::new(reference::Cnn::new(&root, &mut rng, io)),
            NetConfig::ReferenceMlp => Box::new(reference::Mlp::new(&root, &mut rng, io)),
        };
        Ok(Model { vs, net })
    }
}

pub(crate) fn scaled(c: i64, width: f64) -> i64 {
    ((c as f64 * width).round() as i64).max(1)
}
