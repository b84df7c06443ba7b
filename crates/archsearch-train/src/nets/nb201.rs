//! The NAS-Bench-201 cell network (Dong & Yang, ICLR 2020): a stem, three
//! stages of `cells` cells, a residual reduction block between stages, and a
//! head. A cell has four nodes; node `j` sums `op(i → j)(node i)` over
//! `i < j`; the six edge ops are the architecture. Ops are ReLU → conv → BN
//! (`nor_conv_1x1`, `nor_conv_3x3`), `avg_pool_3x3`, `skip_connect` and
//! `none` (zero).
//!
//! Weights are named by the edge (position) that owns them first:
//! `pos3.stage2.cell1.conv.weight` is edge 3's conv in cell 1 of stage 2.

use archsearch_core::space::{NB201_EDGES, NB201_OPS};
use archsearch_core::{Architecture, Space, SpaceKind};
use tch::nn::Path;
use tch::Tensor;

use super::{scaled, IoShape, Network, Scale};
use crate::nn::{BatchNorm, Conv2d, ConvSpec, InitRng, Linear};
use crate::TrainError;

pub fn check_space(space: &Space) -> Result<(), TrainError> {
    if space.kind() != SpaceKind::Nb201 {
        return Err(TrainError::Config("the nb201 network needs `[space] kind = \"nb201\"`".into()));
    }
    Ok(())
}

/// ReLU → conv → BN.
struct ReluConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ReluConvBn {
    fn new(p: &Path, rng: &mut InitRng, cin: i64, cout: i64, k: i64, stride: i64) -> Self {
        let spec = ConvSpec { stride, bias: false, ..ConvSpec::new(cin, cout, k) };
        ReluConvBn { conv: Conv2d::new(&(p / "conv"), rng, spec), bn: BatchNorm::new(&(p / "bn"), cout) }
    }
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&self.conv.forward(&x.relu()), train)
    }
}

enum Op {
    Zero,
    Skip,
    Conv(ReluConvBn),
    AvgPool,
}

struct Cell {
    /// The six edge ops, in [`NB201_EDGES`] order.
    edges: Vec<Op>,
}

impl Cell {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut nodes = vec![x.shallow_clone()];
        for j in 1..4 {
            let mut sum: Option<Tensor> = None;
            for (e, &(from, to)) in NB201_EDGES.iter().enumerate() {
                if to != j {
                    continue;
                }
                let input = &nodes[from];
                let y = match &self.edges[e] {
                    Op::Zero => continue,
                    Op::Skip => input.shallow_clone(),
                    Op::Conv(c) => c.forward_t(input, train),
                    Op::AvgPool => input.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>),
                };
                sum = Some(match sum {
                    Some(s) => s + y,
                    None => y,
                });
            }
            nodes.push(sum.unwrap_or_else(|| x.zeros_like()));
        }
        nodes.pop().expect("four nodes")
    }
}

/// NAS-Bench-201's residual reduction block.
struct Reduction {
    a: ReluConvBn,
    b: ReluConvBn,
    shortcut: Conv2d,
}

impl Reduction {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.b.forward_t(&self.a.forward_t(x, train), train);
        let s = self.shortcut.forward(&x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>));
        s + y
    }
}

enum Block {
    Cell(Cell),
    Reduce(Box<Reduction>),
}

pub struct Nb201Net {
    stem: (Conv2d, BatchNorm),
    blocks: Vec<Block>,
    head_bn: BatchNorm,
    head: Linear,
}

impl Nb201Net {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        root: &Path,
        rng: &mut InitRng,
        space: &Space,
        arch: &Architecture,
        io: IoShape,
        scale: Scale,
        channels: i64,
        cells: usize,
    ) -> Result<Self, TrainError> {
        check_space(space)?;
        let mut c = scaled(channels, scale.width);
        let cells = cells.max(1) * scale.repeats.max(1);
        let stem = (
            Conv2d::new(&(root / "stem" / "conv"), rng, ConvSpec { bias: false, ..ConvSpec::new(io.channels, c, 3) }),
            BatchNorm::new(&(root / "stem" / "bn"), c),
        );
        let mut blocks = Vec::new();
        for stage in 0..3 {
            if stage > 0 {
                let p = root / format!("reduce{stage}");
                blocks.push(Block::Reduce(Box::new(Reduction {
                    a: ReluConvBn::new(&(&p / "a"), rng, c, 2 * c, 3, 2),
                    b: ReluConvBn::new(&(&p / "b"), rng, 2 * c, 2 * c, 3, 1),
                    shortcut: Conv2d::new(&(&p / "shortcut"), rng, ConvSpec { bias: false, ..ConvSpec::new(c, 2 * c, 1) }),
                })));
                c *= 2;
            }
            for cell in 0..cells {
                let edges = (0..NB201_EDGES.len())
                    .map(|e| {
                        let p = root / format!("pos{e}") / format!("stage{stage}") / format!("cell{cell}");
                        match NB201_OPS[arch.choices[e]] {
                            "none" => Op::Zero,
                            "skip_connect" => Op::Skip,
                            "nor_conv_1x1" => Op::Conv(ReluConvBn::new(&p, rng, c, c, 1, 1)),
                            "nor_conv_3x3" => Op::Conv(ReluConvBn::new(&p, rng, c, c, 3, 1)),
                            _ => Op::AvgPool,
                        }
                    })
                    .collect();
                blocks.push(Block::Cell(Cell { edges }));
            }
        }
        let head_bn = BatchNorm::new(&(root / "head" / "bn"), c);
        let head = Linear::new(&(root / "head" / "linear"), rng, c, io.classes);
        Ok(Nb201Net { stem, blocks, head_bn, head })
    }
}

impl Network for Nb201Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = self.stem.1.forward_t(&self.stem.0.forward(x), train);
        for b in &self.blocks {
            x = match b {
                Block::Cell(c) => c.forward_t(&x, train),
                Block::Reduce(r) => r.forward_t(&x, train),
            };
        }
        let x = self.head_bn.forward_t(&x, train).relu();
        self.head.forward(&x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
    }
}
