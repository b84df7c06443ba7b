//! The training loop: epochs of shuffled mini-batches, evaluation after each
//! epoch (reported as an intermediate value), a checkpoint after each epoch,
//! and a clear failure on a NaN or infinite loss.
//!
//! All randomness of a run (data order, augmentation) is drawn from
//! `(seed, epoch)`, so a run resumed from the checkpoint of epoch `e` is the
//! same as one that never stopped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Kind, Tensor};

use archsearch_tasks::{Fingerprint, SharedSlot};

use crate::checkpoint;
use crate::data::{augment, Data, Split};
use crate::nets::Model;
use crate::optim::{OptimConfig, Optimizer};
use crate::TrainError;

/// How long and how to train.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub epochs: usize,
    pub batch_size: i64,
    pub optim: OptimConfig,
    /// Random-crop padding (0: no crop).
    pub crop_pad: i64,
    pub flip: bool,
    /// Also evaluate the test split at the end.
    pub evaluate_test: bool,
    /// Length of the learning-rate schedule in epochs (default: `epochs`);
    /// longer when a run is trained in pieces, as PBT does.
    pub schedule_epochs: Option<usize>,
}

/// What a finished run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub valid_accuracy: f64,
    pub valid_loss: f64,
    pub test_accuracy: Option<f64>,
    pub train_loss: f64,
    pub epochs: usize,
    pub steps: i64,
    /// Wall seconds of this process's share of the run (resumed runs count
    /// only the part after the checkpoint).
    pub seconds: f64,
    /// The epoch the run resumed from (0: from scratch).
    pub resumed_from: usize,
    /// The runner that wrote the checkpoint it resumed from, if it says.
    pub resumed_writer: Option<String>,
    /// Every runner that trained this network, in order, this one last
    /// (runs that checkpoint; runners that took over without training an
    /// epoch appear too).
    pub writers: Vec<String>,
}

/// Accuracy (percent) and mean loss of `model` on a split.
pub fn evaluate(model: &Model, split: &Split, batch: i64) -> (f64, f64) {
    tch::no_grad(|| {
        let n = split.len();
        let mut correct = 0i64;
        let mut loss = 0f64;
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let x = split.images.narrow(0, start, len);
            let y = split.labels.narrow(0, start, len);
            let logits = model.net.forward_t(&x, false);
            loss += logits.cross_entropy_for_logits(&y).double_value(&[]) * len as f64;
            correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
            start += len;
        }
        (100.0 * correct as f64 / n as f64, loss / n as f64)
    })
}

/// Where a run checkpoints: its local folder, its owner's fingerprint, the
/// runner writing (named in each checkpoint) and the shared store, if any.
#[derive(Clone, Copy)]
pub struct Place<'a> {
    pub dir: &'a Path,
    pub fp: &'a Fingerprint,
    pub runner: &'a str,
    pub shared: Option<&'a SharedSlot>,
}

fn save_checkpoint(place: Place<'_>, writers: &[String], model: &Model, opt: &Optimizer, next_epoch: usize) -> Result<(), TrainError> {
    let mut named: BTreeMap<String, Tensor> = model.vs.variables().into_iter().collect();
    named.extend(opt.named_state());
    named.insert("meta.epoch".into(), Tensor::from(next_epoch as i64));
    named.insert("meta.step".into(), Tensor::from(opt.step));
    checkpoint::write_by(place.dir, &named, place.fp, writers)?;
    if let Some(shared) = place.shared {
        checkpoint::push(place.dir, shared);
    }
    Ok(())
}

/// Loads checkpoint tensors into `model` and `opt`; returns the epoch to
/// resume at. Everything is checked before anything is copied, so a refused
/// checkpoint leaves the model as it was.
fn load_checkpoint(tensors: &BTreeMap<String, Tensor>, model: &Model, opt: &mut Optimizer) -> Result<usize, TrainError> {
    let err = |m: String| TrainError::Checkpoint(m);
    let mut targets: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    // Optimiser entries may be missing (a PBT child keeps only those whose
    // shapes match): those start at zero, as for a new parameter.
    targets.extend(opt.named_state().into_iter().filter(|(name, _)| tensors.contains_key(name)));
    for (name, t) in &targets {
        let src = tensors.get(name).ok_or_else(|| err(format!("no tensor `{name}`")))?;
        if src.size() != t.size() {
            return Err(err(format!("`{name}` has shape {:?}, the network needs {:?}", src.size(), t.size())));
        }
    }
    let meta = |k: &str| tensors.get(k).map(|t| t.int64_value(&[])).ok_or_else(|| err(format!("no `{k}`")));
    let (epoch, step) = (meta("meta.epoch")?, meta("meta.step")?);
    tch::no_grad(|| {
        for (name, mut t) in targets {
            t.copy_(&tensors[&name]);
        }
    });
    opt.step = step;
    Ok(epoch as usize)
}

/// Trains `model` on `data`. With a checkpoint place, resumes from the
/// newest checkpoint there that carries its owner's fingerprint (see
/// [`checkpoint::load`]; a shared checkpoint is pulled first) and writes a
/// new one after every epoch (and shares it).
/// `on_epoch(epoch, valid_accuracy)` is called after each epoch (1-based);
/// when it returns false, training stops there ([`TrainError::Cancelled`])
/// without writing that epoch's checkpoint.
pub fn train(
    model: &Model,
    data: &Data,
    spec: &RunSpec,
    seed: u64,
    place: Option<Place<'_>>,
    on_epoch: &mut dyn FnMut(usize, f64) -> bool,
) -> Result<RunResult, TrainError> {
    let start = Instant::now();
    let params: Vec<(String, Tensor)> = {
        let mut v: Vec<(String, Tensor)> = model.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut opt = Optimizer::new(spec.optim.clone(), params);
    let mut first_epoch = 0;
    let mut resumed_writer = None;
    // The runners that trained this network so far; this one is added.
    let mut writers: Vec<String> = Vec::new();
    if let Some(p) = place {
        if let Some(shared) = p.shared {
            checkpoint::pull(p.dir, shared);
        }
        if let Some((epoch, before)) = checkpoint::load_with_writers(p.dir, p.fp, &mut |t| load_checkpoint(t, model, &mut opt)) {
            first_epoch = epoch;
            resumed_writer = before.last().cloned();
            tracing::info!(checkpoint = %p.dir.display(), epoch, writer = resumed_writer.as_deref().unwrap_or("?"), "resuming from checkpoint");
            writers = before;
        }
        if writers.last().map(String::as_str) != Some(p.runner) {
            writers.push(p.runner.to_string());
        }
    }
    let n = data.train.len();
    let mut train_loss = f64::NAN;
    let (mut valid_acc, mut valid_loss) = (f64::NAN, f64::NAN);
    if first_epoch >= spec.epochs {
        (valid_acc, valid_loss) = evaluate(model, &data.valid, 1024);
    }
    for epoch in first_epoch..spec.epochs {
        let lr = spec.optim.lr_at(epoch, spec.schedule_epochs.unwrap_or(spec.epochs));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<i64> = (0..n).collect();
        order.shuffle(&mut rng);
        let order = Tensor::from_slice(&order).to_device(data.train.images.device());
        let mut total = Tensor::zeros([], (Kind::Float, data.train.images.device()));
        let mut batches = 0;
        let mut at = 0;
        while at < n {
            let len = spec.batch_size.min(n - at);
            let idx = order.narrow(0, at, len);
            let mut x = data.train.images.index_select(0, &idx);
            if spec.crop_pad > 0 || spec.flip {
                x = augment(&x, spec.crop_pad, spec.flip, &mut rng);
            }
            let y = data.train.labels.index_select(0, &idx);
            opt.zero_grad();
            let loss = model.net.forward_t(&x, true).cross_entropy_for_logits(&y);
            loss.backward();
            opt.step(lr);
            total += loss.detach();
            batches += 1;
            at += len;
        }
        train_loss = total.double_value(&[]) / batches as f64;
        if !train_loss.is_finite() {
            return Err(TrainError::NonFinite { epoch: epoch + 1, loss: train_loss });
        }
        (valid_acc, valid_loss) = evaluate(model, &data.valid, 1024);
        if !on_epoch(epoch + 1, valid_acc) {
            return Err(TrainError::Cancelled { epoch: epoch + 1 });
        }
        if let Some(p) = place {
            save_checkpoint(p, &writers, model, &opt, epoch + 1)?;
        }
    }
    let test_accuracy = spec.evaluate_test.then(|| evaluate(model, &data.test, 1024).0);
    Ok(RunResult {
        valid_accuracy: valid_acc,
        valid_loss,
        test_accuracy,
        train_loss,
        epochs: spec.epochs,
        steps: opt.step,
        seconds: start.elapsed().as_secs_f64(),
        resumed_from: first_epoch,
        resumed_writer,
        writers,
    })
}

/// Times `steps` Adam steps (lr 1e-3, batch `batch`) of `model` on the
/// training split, after 10 warm-up steps; returns milliseconds per step.
/// The loop is the same as [`train`]'s, without the epoch bookkeeping.
pub fn time_steps(model: &Model, data: &Data, steps: usize, batch: i64, seed: u64) -> f64 {
    let params: Vec<(String, Tensor)> = model.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    let mut opt = Optimizer::new(OptimConfig { lr: 1e-3, ..OptimConfig::default() }, params);
    let n = data.train.len();
    let mut order: Vec<i64> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let order = Tensor::from_slice(&order).to_device(data.train.images.device());
    let mut step = |i: usize| {
        let at = (i as i64 * batch) % (n - batch);
        let idx = order.narrow(0, at, batch);
        let x = data.train.images.index_select(0, &idx);
        let y = data.train.labels.index_select(0, &idx);
        opt.zero_grad();
        let loss = model.net.forward_t(&x, true).cross_entropy_for_logits(&y);
        loss.backward();
        opt.step(1e-3);
        loss
    };
    for i in 0..10 {
        let _ = step(i);
    }
    let start = Instant::now();
    let mut last = None;
    for i in 0..steps {
        last = Some(step(i));
    }
    if let Some(l) = last {
        let _ = l.double_value(&[]);
    }
    start.elapsed().as_secs_f64() * 1000.0 / steps as f64
}
