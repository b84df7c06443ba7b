//! Export: a trained network as three files a PyTorch user loads without
//! archsearch.
//!
//! * `model.py`: a standalone PyTorch module (it imports only `torch` and the
//!   standard library) built for one architecture at one fidelity, whose
//!   parameter names are archsearch's (`pos3.conv.weight`); its `load()`
//!   returns the network with its trained weights, in evaluation mode.
//! * `model.safetensors`: the weights and BatchNorm statistics alone (no
//!   optimiser state, no training metadata).
//! * `architecture.json`: the architecture, its space, the network family
//!   and fidelity, and the input the network expects (shape, normalisation).
//!
//! Each network family has its PyTorch twin in `export/*.py`, written to
//! mirror [`crate::nets`] line by line; [`verify`] checks a written export by
//! running it with PyTorch on a fixed batch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use archsearch_core::{Architecture, Space};
use tch::{Device, Kind, Tensor};

use crate::nets::{macro_net, mlp, scaled, IoShape, Model, NetConfig, Scale};
use archsearch_tasks::Task as _;

use crate::{checkpoint, TrainError, TrainTask};

pub const PYTHON: &str = "model.py";
pub const WEIGHTS: &str = "model.safetensors";
pub const ARCHITECTURE: &str = "architecture.json";

const COMMON: &str = include_str!("export/common.py");

/// The PyTorch source of a family's `Net` class and the constructor
/// arguments that build `arch` at `scale`.
fn family(
    net: &NetConfig,
    space: &Space,
    arch: &Architecture,
    io: IoShape,
    scale: Scale,
) -> Result<(&'static str, serde_json::Value), TrainError> {
    use serde_json::json;
    let options: Vec<&str> = space.decisions().iter().zip(&arch.choices).map(|(d, &c)| d.options[c].as_str()).collect();
    Ok(match net {
        NetConfig::Macro { channels, reductions, stem_stride } => (
            include_str!("export/macro_net.py"),
            json!({
                "ops": options,
                "channels": scaled(*channels, scale.width),
                "reductions": macro_net::reduction_positions(space.len(), reductions.as_deref()),
                "stem_stride": stem_stride.max(&1),
                "repeats": scale.repeats.max(1),
                "in_channels": io.channels,
                "classes": io.classes,
            }),
        ),
        NetConfig::Nb201 { channels, cells } => (
            include_str!("export/nb201.py"),
            json!({
                "edges": options,
                "channels": scaled(*channels, scale.width),
                "cells": cells.max(&1) * scale.repeats.max(1),
                "in_channels": io.channels,
                "classes": io.classes,
            }),
        ),
        NetConfig::Mlp => (
            include_str!("export/mlp.py"),
            json!({
                "layers": serde_json::to_value(mlp::describe(space, arch, io, scale)?).map_err(|e| TrainError::Export(e.to_string()))?,
                "in_features": io.channels * io.resolution * io.resolution,
                "classes": io.classes,
            }),
        ),
        NetConfig::ReferenceCnn | NetConfig::ReferenceMlp => {
            return Err(TrainError::Export(
                "the reference networks are benchmark fixtures, not searched networks: nothing to export".into(),
            ))
        }
    })
}

/// `v` as a Python literal (JSON but for `True`, `False` and `None`).
fn python_literal(v: &serde_json::Value) -> String {
    use serde_json::Value::*;
    match v {
        Null => "None".into(),
        Bool(b) => if *b { "True" } else { "False" }.into(),
        Number(_) | String(_) => v.to_string(),
        Array(a) => format!("[{}]", a.iter().map(python_literal).collect::<Vec<_>>().join(", ")),
        Object(o) => format!(
            "{{{}}}",
            o.iter().map(|(k, v)| format!("{}: {}", serde_json::Value::from(k.as_str()), python_literal(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The source of `model.py` for `arch`; `about` (the study, trial and
/// metrics) goes into its docstring.
pub fn python_source(task: &TrainTask, arch: &Architecture, about: &str) -> Result<String, TrainError> {
    let (source, config) = family(&task.config().network, task.space(), arch, task.io(), task.scale())?;
    let config = match &config {
        serde_json::Value::Object(o) => {
            o.iter().map(|(k, v)| format!("    {}: {},\n", serde_json::Value::from(k.as_str()), python_literal(v))).collect::<String>()
        }
        _ => unreachable!("a family's config is an object"),
    };
    let io = task.io();
    let (mean, std) = task.config().dataset.stats();
    Ok(format!(
        r#""""A network found by archsearch, as a standalone PyTorch module (needs only torch).

{about}
Input: float tensors of shape (N, {c}, {r}, {r}): pixels in [0, 1], minus
mean {mean:?}, divided by std {std:?} per channel. Output: {classes} logits.

    import sys; sys.path.insert(0, "path/to/this/folder")
    import model
    net = model.load()  # trained weights from model.safetensors, in eval mode

Generated by `archsearch export`; parameter names match archsearch's.
"""
{COMMON}{source}

# The architecture and fidelity this module is built for.
CONFIG = {{
{config}}}
"#,
        c = io.channels,
        r = io.resolution,
        classes = io.classes,
    ))
}

/// What [`export`] wrote.
pub struct Exported {
    /// The network with the exported weights, on the CPU.
    pub model: Model,
    /// The epoch the checkpoint was written after.
    pub epoch: i64,
}

/// Exports `arch`, trained by `task` with the weights of the checkpoint
/// file `checkpoint`, into `out`: `model.py`, `model.safetensors` (the
/// network's tensors, nothing else) and `architecture.json` (`about` with
/// the architecture, network and input added).
pub fn export(
    task: &TrainTask,
    arch: &Architecture,
    checkpoint: &Path,
    out: &Path,
    about: serde_json::Value,
) -> Result<Exported, TrainError> {
    let model = task.build_on(arch, 0, Device::Cpu)?;
    let tensors = checkpoint::read_file(checkpoint)?;
    let err = |m: String| TrainError::Checkpoint(format!("{}: {m}", checkpoint.display()));
    let mut weights = BTreeMap::new();
    for (name, mut t) in model.vs.variables() {
        let src = tensors.get(&name).ok_or_else(|| err(format!("no tensor `{name}`: not a checkpoint of this network")))?;
        if src.size() != t.size() {
            return Err(err(format!("`{name}` has shape {:?}, the network needs {:?}", src.size(), t.size())));
        }
        tch::no_grad(|| t.copy_(src));
        weights.insert(name, t);
    }
    let epoch = tensors.get("meta.epoch").map(|t| t.int64_value(&[])).unwrap_or(0);
    let io_err = |p: &Path, e: std::io::Error| TrainError::Export(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let text = |v: &serde_json::Value| v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
    let metadata: HashMap<String, String> = [("archsearch.arch".to_string(), task.space().canonical(arch))]
        .into_iter()
        .chain(about.as_object().into_iter().flatten().map(|(k, v)| (format!("archsearch.{k}"), text(v))))
        .collect();
    checkpoint::write_file(&out.join(WEIGHTS), &weights, metadata)?;
    let io = task.io();
    let (mean, std) = task.config().dataset.stats();
    let mut description = about.clone();
    if let Some(o) = description.as_object_mut() {
        o.insert("architecture".into(), task.space().canonical(arch).into());
        o.insert("choices".into(), serde_json::json!(arch.choices));
        o.insert(
            "space".into(),
            serde_json::json!(task
                .space()
                .decisions()
                .iter()
                .map(|d| serde_json::json!({"name": d.name, "options": d.options}))
                .collect::<Vec<_>>()),
        );
        o.insert("network".into(), serde_json::to_value(&task.config().network).map_err(|e| TrainError::Export(e.to_string()))?);
        o.insert("fidelity".into(), serde_json::json!({"width": task.scale().width, "repeats": task.scale().repeats, "epochs": epoch}));
        o.insert(
            "input".into(),
            serde_json::json!({"shape": [io.channels, io.resolution, io.resolution], "dataset": task.config().dataset, "mean": mean, "std": std, "classes": io.classes}),
        );
    }
    let line = |(k, v): (&String, &serde_json::Value)| match v.as_object() {
        Some(m) => format!(
            "{k}: {}",
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_f64().map(|f| format!("{f:.4}")).unwrap_or_else(|| text(v))))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        None => format!("{k}: {}", text(v)),
    };
    let about_text = format!(
        "{}\narchitecture: {}",
        about.as_object().map(|o| o.iter().map(line).collect::<Vec<_>>().join("\n")).unwrap_or_default(),
        task.space().canonical(arch)
    );
    let json = serde_json::to_string_pretty(&description).map_err(|e| TrainError::Export(e.to_string()))?;
    std::fs::write(out.join(ARCHITECTURE), json + "\n").map_err(|e| io_err(&out.join(ARCHITECTURE), e))?;
    std::fs::write(out.join(PYTHON), python_source(task, arch, &about_text)?).map_err(|e| io_err(&out.join(PYTHON), e))?;
    Ok(Exported { model, epoch })
}

/// What [`verify`] measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Verified {
    /// Largest absolute difference between PyTorch's logits and archsearch's
    /// (none when not finite or when the shapes differ).
    pub max_abs_diff: Option<f64>,
    /// Largest absolute logit (for scale).
    pub max_abs_logit: f64,
    /// Images in the batch.
    pub batch: i64,
    /// Why the logits cannot be compared, if they cannot.
    #[serde(default)]
    pub problem: Option<String>,
}

/// The largest difference [`verify`] accepts, relative to the largest
/// logit (absolute when logits are below 1): float32 sums taken in another
/// order differ by a few units in the last place.
pub const TOLERANCE: f64 = 1e-5;

const VERIFY: &str = r#"
import importlib.util, json, math, os, sys
import torch
folder, batch = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("exported_model", os.path.join(folder, "model.py"))
model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model)
net = model.load(folder)
ref = model.read_safetensors(batch)
with torch.no_grad():
    out = net(ref["input"])
same = out.shape == ref["logits"].shape
diff = (out - ref["logits"]).abs().max().item() if same else None
print(json.dumps({
    "max_abs_diff": diff if diff is None or math.isfinite(diff) else None,
    "max_abs_logit": ref["logits"].abs().max().item(),
    "batch": out.shape[0],
    "problem": None if same else f"PyTorch's logits have shape {list(out.shape)}, archsearch's {list(ref['logits'].shape)}",
}))
"#;

/// Runs the export in `out` with `python` (which has torch) on `input`, and
/// compares its logits with `model`'s (evaluation mode). Fails unless they
/// agree to [`TOLERANCE`].
pub fn verify(out: &Path, python: &Path, model: &Model, input: &Tensor) -> Result<Verified, TrainError> {
    let fail = |m: String| TrainError::Export(format!("verify: {m}"));
    let input = input.to_device(Device::Cpu).to_kind(Kind::Float);
    let logits = tch::no_grad(|| model.net.forward_t(&input, false));
    let batch_file = std::env::temp_dir().join(format!("archsearch-verify-{}-{:x}.safetensors", std::process::id(), rand::random::<u64>()));
    let tensors = BTreeMap::from([("input".to_string(), input), ("logits".to_string(), logits)]);
    checkpoint::write_file(&batch_file, &tensors, HashMap::new())?;
    let run = std::process::Command::new(python).arg("-c").arg(VERIFY).arg(out).arg(&batch_file).output();
    let _ = std::fs::remove_file(&batch_file);
    let run = run.map_err(|e| fail(format!("cannot run {}: {e}", python.display())))?;
    if !run.status.success() {
        return Err(fail(format!("{} failed: {}", python.display(), String::from_utf8_lossy(&run.stderr).trim())));
    }
    let stdout = String::from_utf8_lossy(&run.stdout);
    let v: Verified = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .map_err(|e| fail(format!("unreadable result `{}`: {e}", stdout.trim())))?;
    if let Some(p) = &v.problem {
        return Err(fail(p.clone()));
    }
    let limit = TOLERANCE * v.max_abs_logit.max(1.0);
    match v.max_abs_diff {
        Some(d) if d <= limit => Ok(v),
        Some(d) => Err(fail(format!("PyTorch's logits differ from archsearch's by up to {d:.3e} (tolerance {limit:.1e})"))),
        None => Err(fail("PyTorch's logits are not finite".into())),
    }
}
