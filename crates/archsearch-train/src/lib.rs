//! The training engine: turn an architecture into a network, train it on
//! real data, and score it.
//!
//! * [`data`] — Fashion-MNIST / MNIST (IDX) and CIFAR-10 (binary) loaders,
//!   the seeded train/validation split, normalisation and augmentation.
//! * [`nn`] — layers initialised as PyTorch does, named by position.
//! * [`nets`] — networks built from architectures (macro chain, MLP, and the
//!   fixed reference networks of the speed benchmark).
//! * [`optim`] — SGD / Adam / AdamW with checkpointable state; schedules.
//! * [`trainer`] — the loop, evaluation, resume.
//! * [`checkpoint`] — safetensors checkpoints fingerprinted with their owner.
//! * [`TrainTask`] — all of it as an archsearch [`Task`] at one fidelity.

pub mod checkpoint;
pub mod data;
pub mod export;
pub mod mixing;
pub mod nets;
pub mod nn;
pub mod optim;
pub mod trainer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use archsearch_core::{Architecture, Space};
use archsearch_tasks::{Evaluation, Fingerprint, Task, TaskError, TrialContext};
use serde::{Deserialize, Serialize};
use tch::Device;

use data::{Data, DatasetKind, RawDataset};
use nets::{IoShape, NetConfig, Scale};
use optim::OptimConfig;
use trainer::RunSpec;

/// Errors of the training engine.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Data(String),
    #[error("invalid training config: {0}")]
    Config(String),
    #[error("loss is {loss} after epoch {epoch} (NaN or infinite)")]
    NonFinite { epoch: usize, loss: f64 },
    #[error("stopped after epoch {epoch}: the trial was taken over by another runner")]
    Cancelled { epoch: usize },
    #[error("checkpoint {0}")]
    Checkpoint(String),
    #[error("{0}")]
    Device(String),
    #[error("export: {0}")]
    Export(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Where to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA if available, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device, TrainError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => Err(TrainError::Device(
                "device = \"cuda\" was asked for, but CUDA is not available on this machine (no GPU or driver found)".into(),
            )),
        }
    }
}

/// One fidelity: how big and how long an evaluation is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fidelity {
    pub epochs: usize,
    /// Width multiplier of every layer.
    pub width: f64,
    /// Repeats of each searched layer (more layers).
    pub repeats: usize,
    /// Input resolution (default: the data set's own).
    pub resolution: Option<i64>,
    /// Fraction of the training split used.
    pub fraction: f64,
}

impl Default for Fidelity {
    fn default() -> Self {
        Fidelity { epochs: 10, width: 1.0, repeats: 1, resolution: None, fraction: 1.0 }
    }
}

impl Fidelity {
    fn check(&self, what: &str) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(format!("[task.{what}] {m}")));
        if self.epochs == 0 {
            return bad("epochs must be >= 1".into());
        }
        if self.width.is_nan() || self.width <= 0.0 {
            return bad(format!("width = {} must be > 0", self.width));
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return bad(format!("fraction = {} must be in (0, 1]", self.fraction));
        }
        if self.resolution.is_some_and(|r| r < 4) {
            return bad("resolution must be >= 4".into());
        }
        if self.repeats == 0 {
            return bad("repeats must be >= 1".into());
        }
        Ok(())
    }
}

fn default_valid_fraction() -> f64 {
    1.0 / 6.0
}
fn default_batch() -> i64 {
    128
}
fn default_threads() -> i32 {
    1
}
fn default_top() -> usize {
    1
}

/// `[task]` of a training study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainTaskConfig {
    pub dataset: DatasetKind,
    /// Folder of the data files (default for Fashion-MNIST: the Debian package's).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Download missing data files into `data_dir` from the data set's
    /// canonical address (needs a network).
    #[serde(default)]
    pub download: bool,
    /// Fraction of the training set held out for validation (the search signal).
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    /// Seed of the train/validation split (fixed for the whole study).
    #[serde(default)]
    pub split_seed: u64,
    #[serde(default)]
    pub device: DeviceChoice,
    /// libtorch threads per trial.
    #[serde(default = "default_threads")]
    pub threads: i32,
    #[serde(default = "default_batch")]
    pub batch_size: i64,
    /// Random-crop padding in pixels (0: no crop).
    #[serde(default)]
    pub crop_pad: i64,
    /// Random horizontal flips.
    #[serde(default)]
    pub flip: bool,
    pub network: NetConfig,
    #[serde(default)]
    pub optimizer: OptimConfig,
    /// The fidelity trials are evaluated at during the search.
    #[serde(default)]
    pub proxy: Fidelity,
    /// The fidelity the best architectures are retrained at after the search.
    #[serde(default)]
    pub target: Option<Fidelity>,
    /// How many of the best architectures to retrain at the target fidelity.
    #[serde(default = "default_top")]
    pub retrain_top: usize,
    /// Also report test accuracy (set for the retraining study; test data is
    /// otherwise never touched).
    #[serde(default)]
    pub evaluate_test: bool,
}

impl TrainTaskConfig {
    pub fn check(&self, space: &Space) -> Result<(), TrainError> {
        self.network.check_space(space)?;
        self.proxy.check("proxy")?;
        if let Some(t) = &self.target {
            t.check("target")?;
        }
        if self.valid_fraction.is_nan() || self.valid_fraction <= 0.0 || self.valid_fraction >= 1.0 {
            return Err(TrainError::Config(format!("[task] valid_fraction = {} must be in (0, 1)", self.valid_fraction)));
        }
        if self.batch_size < 1 || self.threads < 1 {
            return Err(TrainError::Config("batch_size and threads must be >= 1".into()));
        }
        if self.optimizer.lr.is_nan() || self.optimizer.lr <= 0.0 {
            return Err(TrainError::Config(format!("[task.optimizer] lr = {} must be > 0", self.optimizer.lr)));
        }
        for (what, f) in std::iter::once(("proxy", &self.proxy)).chain(self.target.iter().map(|t| ("target", t))) {
            self.check_size(space, what, f)?;
            // Its two reductions add a strided conv's output to a 2×2 pool's:
            // their sizes agree only when the resolution divides by 4.
            if let (NetConfig::Nb201 { .. }, Some(r)) = (&self.network, f.resolution) {
                if r % 4 != 0 {
                    return Err(TrainError::Config(format!("[task.{what}] resolution = {r}: the nb201 network needs a multiple of 4")));
                }
            }
        }
        Ok(())
    }

    /// Refuses a network that cannot fit in memory: a rough upper bound on
    /// the bytes of its weights, gradients and optimiser moments (the widest
    /// layer squared, for every layer) against the machine's memory.
    fn check_size(&self, space: &Space, what: &str, f: &Fidelity) -> Result<(), TrainError> {
        let (base, layers): (f64, f64) = match &self.network {
            NetConfig::Macro { channels, reductions, .. } => {
                let doublings = reductions.as_ref().map_or(2, |r| r.len()) as i32;
                (*channels as f64 * 2f64.powi(doublings) * 5.0, 32.0 * f.repeats as f64)
            }
            NetConfig::Nb201 { channels, cells } => (*channels as f64 * 4.0 * 3.0, (*cells as f64 * 3.0 + 2.0) * 6.0),
            // MLP widths are the options of its `layerN.width` decisions (and the input).
            NetConfig::Mlp => {
                let widths = space.decisions().iter().filter(|d| d.name.ends_with(".width")).flat_map(|d| d.options.iter());
                let widest = widths.filter_map(|o| o.parse::<f64>().ok()).fold(28.0 * 28.0 * 3.0, f64::max);
                (widest, space.len() as f64 + 1.0)
            }
            NetConfig::ReferenceCnn | NetConfig::ReferenceMlp => (1024.0, 4.0),
        };
        let widest = base * f.width;
        let bytes = widest * widest * layers * 4.0 * 4.0;
        let memory = physical_memory().unwrap_or(u64::MAX) as f64;
        if !bytes.is_finite() || bytes > memory {
            return Err(TrainError::Config(format!(
                "[task.{what}] width = {}: the network would need about {:.1e} bytes, more than this machine's memory ({:.1e} bytes)",
                f.width, bytes, memory
            )));
        }
        Ok(())
    }

    /// A hash of everything that shapes the weights trained at `fidelity`:
    /// the data and its split, augmentation, batch size, network, optimiser
    /// and the fidelity itself (not where or how fast it runs).
    pub fn weights_hash(&self, fidelity: &Fidelity) -> String {
        let shaping = serde_json::json!({
            "dataset": self.dataset,
            "valid_fraction": self.valid_fraction,
            "split_seed": self.split_seed,
            "batch_size": self.batch_size,
            "crop_pad": self.crop_pad,
            "flip": self.flip,
            "network": self.network,
            "optimizer": self.optimizer,
            "fidelity": fidelity,
        });
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(shaping.to_string().as_bytes()))
    }
}

/// The machine's physical memory in bytes.
fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system constants.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    (pages > 0 && size > 0).then(|| pages as u64 * size as u64)
}

/// A training task at one fidelity.
pub struct TrainTask {
    space: Space,
    config: TrainTaskConfig,
    fidelity: Fidelity,
    data: Arc<Data>,
    device: Device,
    evaluate_test: bool,
}

impl TrainTask {
    /// Loads the data and prepares it for `fidelity`. `evaluate_test` adds
    /// the test accuracy to the metrics (final retraining only).
    pub fn new(
        config: &TrainTaskConfig,
        space: Space,
        fidelity: Fidelity,
        evaluate_test: bool,
        device: Option<DeviceChoice>,
    ) -> Result<Self, TrainError> {
        config.check(&space)?;
        let device = device.unwrap_or(config.device).resolve()?;
        let raw = RawDataset::load_or_download(config.dataset, config.data_dir.as_deref(), config.download)?;
        let data = Data::prepare(&raw, config.valid_fraction, config.split_seed, fidelity.fraction, fidelity.resolution, device)?;
        Ok(TrainTask { space, config: config.clone(), fidelity, data: Arc::new(data), device, evaluate_test })
    }

    pub fn data(&self) -> &Data {
        &self.data
    }

    fn run_spec(&self) -> RunSpec {
        RunSpec {
            epochs: self.fidelity.epochs,
            batch_size: self.config.batch_size,
            optim: self.config.optimizer.clone(),
            crop_pad: self.config.crop_pad,
            flip: self.config.flip,
            evaluate_test: self.evaluate_test,
            schedule_epochs: None,
        }
    }

    /// The fingerprint of a checkpoint this task writes for `owner` of
    /// study `study` training `arch`.
    pub fn fingerprint(&self, study: &str, owner: String, arch: &Architecture) -> Fingerprint {
        Fingerprint { study: study.to_string(), owner, arch: self.space.canonical(arch), config: self.config.weights_hash(&self.fidelity) }
    }

    /// Trains `arch` (a network drawn from `seed`, or the checkpoint in
    /// `dir` if one there carries `fp`) up to epoch `until` of a
    /// `total`-epoch schedule, at learning rate `lr` if given, checkpointing
    /// into `dir`.
    #[allow(clippy::too_many_arguments)]
    pub fn train_member(
        &self,
        arch: &Architecture,
        seed: u64,
        dir: &std::path::Path,
        fp: &Fingerprint,
        shared: Option<&archsearch_tasks::SharedSlot>,
        until: usize,
        total: usize,
        lr: Option<f64>,
        evaluate_test: bool,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<trainer::RunResult, TrainError> {
        tch::set_num_threads(self.config.threads);
        let model = self.build(arch, seed)?;
        let mut spec = self.run_spec();
        spec.epochs = until;
        spec.schedule_epochs = Some(total);
        spec.evaluate_test = evaluate_test;
        if let Some(lr) = lr {
            spec.optim.lr = lr;
        }
        let place = trainer::Place { dir, fp, runner: &format!("pid {}", std::process::id()), shared };
        trainer::train(&model, &self.data, &spec, seed, Some(place), &mut |_, _| keep_going())
    }

    /// A freshly initialised network of `arch` as named CPU tensors, and the
    /// names of its trained parameters.
    pub fn fresh_tensors(
        &self,
        arch: &Architecture,
        seed: u64,
    ) -> Result<(BTreeMap<String, tch::Tensor>, std::collections::BTreeSet<String>), TrainError> {
        let model = self.build(arch, seed)?;
        let vars = model.vs.variables();
        let trainable = vars.iter().filter(|(_, t)| t.requires_grad()).map(|(k, _)| k.clone()).collect();
        // On the CPU, where checkpoints are read and mixed.
        Ok((vars.into_iter().map(|(k, t)| (k, t.detach().to_device(Device::Cpu))).collect(), trainable))
    }

    /// The task's settings.
    pub fn config(&self) -> &TrainTaskConfig {
        &self.config
    }

    /// Builds the network of `arch` (weights drawn from `seed`).
    pub fn build(&self, arch: &Architecture, seed: u64) -> Result<nets::Model, TrainError> {
        self.build_on(arch, seed, self.device)
    }

    /// Builds the network of `arch` on `device`.
    pub fn build_on(&self, arch: &Architecture, seed: u64, device: Device) -> Result<nets::Model, TrainError> {
        self.config.network.build(&self.space, arch, self.io(), self.scale(), device, seed)
    }

    /// The shape of the networks' input and output.
    pub fn io(&self) -> IoShape {
        IoShape { channels: self.data.channels, resolution: self.data.resolution, classes: self.data.classes }
    }

    /// The structural knobs of this task's fidelity.
    pub fn scale(&self) -> Scale {
        Scale { width: self.fidelity.width, repeats: self.fidelity.repeats }
    }
}

impl Task for TrainTask {
    fn space(&self) -> &Space {
        &self.space
    }

    fn objective(&self) -> &str {
        "valid_accuracy"
    }

    /// The fidelity axis is the epochs of the search fidelity: a budget of
    /// `b` trains the first `b` epochs of its learning-rate schedule, so a
    /// trial resumed (from its checkpoint) to a larger budget continues as
    /// if it had never stopped.
    fn check_budget(&self, budget: u64) -> Result<(), TaskError> {
        if budget == 0 || budget > self.fidelity.epochs as u64 {
            return Err(TaskError::Invalid(format!(
                "budget {budget}: a training task's budgets are epochs 1..={} (`[task.proxy] epochs`)",
                self.fidelity.epochs
            )));
        }
        Ok(())
    }

    fn evaluate(&self, arch: &Architecture, ctx: &mut TrialContext<'_>) -> Result<Evaluation, TaskError> {
        tch::set_num_threads(self.config.threads);
        let fail = |e: TrainError| TaskError::Failed(e.to_string());
        let model = self.build(arch, ctx.seed).map_err(fail)?;
        let mut spec = self.run_spec();
        if let Some(b) = ctx.budget {
            self.check_budget(b)?;
            spec.epochs = b as usize;
            spec.schedule_epochs = Some(self.fidelity.epochs);
        }
        let reporter = &mut *ctx.reporter;
        let slot = ctx.checkpoint.as_ref().map(|c| (c, self.fingerprint(&c.study, c.owner.clone(), arch)));
        let place = slot.as_ref().map(|(c, fp)| trainer::Place { dir: &c.dir, fp, runner: &c.runner, shared: c.shared.as_ref() });
        let result = trainer::train(&model, &self.data, &spec, ctx.seed, place, &mut |epoch, acc| {
            reporter.report(epoch as u64, acc);
            !reporter.cancelled()
        })
        .map_err(fail)?;
        let params: i64 = model.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        let mut metrics = BTreeMap::from([
            ("valid_accuracy".to_string(), result.valid_accuracy),
            ("valid_loss".to_string(), result.valid_loss),
            ("train_loss".to_string(), result.train_loss),
            ("train_seconds".to_string(), result.seconds),
            ("epochs".to_string(), result.epochs as f64),
            ("params".to_string(), params as f64),
            ("resumed_from_epoch".to_string(), result.resumed_from as f64),
        ]);
        // Whether the checkpoint it resumed from was written by another
        // runner (another worker, on this machine or another one).
        if let (Some(writer), Some(c)) = (&result.resumed_writer, &ctx.checkpoint) {
            metrics.insert("resumed_from_other_runner".into(), f64::from(u8::from(writer != &c.runner)));
        }
        // How many runners (workers) trained it over all its evaluations.
        let distinct: std::collections::BTreeSet<&String> = result.writers.iter().collect();
        if !distinct.is_empty() {
            metrics.insert("trained_by_runners".into(), distinct.len() as f64);
        }
        if let Some(t) = result.test_accuracy {
            metrics.insert("test_accuracy".into(), t);
        }
        Ok(Evaluation { value: result.valid_accuracy, metrics, cost: result.seconds })
    }
}
