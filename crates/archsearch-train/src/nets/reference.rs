//! The fixed reference networks of the speed benchmark (mirrored in
//! `benches/pytorch_reference.py`): a small CNN and an MLP.

use tch::nn::Path;
use tch::Tensor;

use super::{IoShape, Network};
use crate::nn::{Conv2d, ConvSpec, InitRng, Linear};

/// conv3×3 C→16, ReLU, max-pool, conv3×3 16→32, ReLU, max-pool,
/// linear 32·(R/4)²→128, ReLU, linear 128→classes.
pub struct Cnn {
    c1: Conv2d,
    c2: Conv2d,
    f1: Linear,
    f2: Linear,
}

impl Cnn {
    pub fn new(root: &Path, rng: &mut InitRng, io: IoShape) -> Self {
        let r = io.resolution / 4;
        Cnn {
            c1: Conv2d::new(&(root / "conv1"), rng, ConvSpec::new(io.channels, 16, 3)),
            c2: Conv2d::new(&(root / "conv2"), rng, ConvSpec::new(16, 32, 3)),
            f1: Linear::new(&(root / "fc1"), rng, 32 * r * r, 128),
            f2: Linear::new(&(root / "fc2"), rng, 128, io.classes),
        }
    }
}

impl Network for Cnn {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        let x = self.c1.forward(x).relu().max_pool2d_default(2);
        let x = self.c2.forward(&x).relu().max_pool2d_default(2);
        self.f2.forward(&self.f1.forward(&x.flatten(1, -1)).relu())
    }
}

/// Flatten, linear →256, ReLU, linear 256→256, ReLU, linear 256→classes.
pub struct Mlp {
    l1: Linear,
    l2: Linear,
    l3: Linear,
}

impl Mlp {
    pub fn new(root: &Path, rng: &mut InitRng, io: IoShape) -> Self {
        let cin = io.channels * io.resolution * io.resolution;
        Mlp {
            l1: Linear::new(&(root / "fc1"), rng, cin, 256),
            l2: Linear::new(&(root / "fc2"), rng, 256, 256),
            l3: Linear::new(&(root / "fc3"), rng, 256, io.classes),
        }
    }
}

impl Network for Mlp {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        let x = x.flatten(1, -1);
        self.l3.forward(&self.l2.forward(&self.l1.forward(&x).relu()).relu())
    }
}
