//! `archsearch export`: a trial's trained network as files for PyTorch
//! (see [`archsearch_train::export`]), picked from a study store.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use archsearch_core::{Architecture, TrialState};
use archsearch_store::{Storage, StudyRecord, TrialRecord};
use archsearch_train::export::Verified;
use archsearch_train::{checkpoint, DeviceChoice, TrainTask};

use crate::config::{Config, TaskConfig};
use crate::study::{best, checkpoint_dir, shared_key};

/// What was exported, and what `--verify` measured.
pub struct Outcome {
    pub study: String,
    pub trial: u64,
    pub arch: String,
    pub epoch: i64,
    pub files: Vec<PathBuf>,
    pub verified: Option<Verified>,
}

/// The study to export from: `name`, or else the newest retraining study
/// (`NAME.target…`: the found network trained at the target fidelity), or
/// else the store's only training study.
fn pick_study(store: &dyn Storage, name: Option<&str>) -> Result<StudyRecord> {
    if let Some(n) = name {
        return Ok(store.study(n)?);
    }
    let studies: Vec<StudyRecord> = store
        .studies()?
        .into_iter()
        .filter(|s| toml::from_str::<Config>(&s.config).is_ok_and(|c| matches!(c.task, TaskConfig::Train(_))))
        .collect();
    let names = || studies.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    if let Some(t) = studies.iter().filter(|s| s.name.contains(".target")).max_by(|a, b| a.created_at.total_cmp(&b.created_at)) {
        return Ok(t.clone());
    }
    match studies.len() {
        0 => bail!("no study of this store trains networks: nothing to export"),
        1 => Ok(studies[0].clone()),
        _ => bail!("the store holds several training studies ({}): choose one with --name", names()),
    }
}

/// Exports trial `trial` (default: the best complete one) of the study
/// `name` in the store at `url` into `out`; with `python`, verifies the
/// export with that Python's PyTorch.
pub fn run(url: &str, name: Option<&str>, trial: Option<u64>, out: &Path, python: Option<&Path>) -> Result<Outcome> {
    let store = archsearch_store::open_read_only(url)?;
    let study = pick_study(store.as_ref(), name)?;
    let trials = store.trials(study.id)?;
    let t: &TrialRecord = match trial {
        Some(n) => trials.iter().find(|t| t.number == n).with_context(|| format!("study `{}` has no trial {n}", study.name))?,
        None => best(&trials, study.direction).with_context(|| format!("study `{}` has no complete trial yet", study.name))?,
    };
    if t.state != TrialState::Complete {
        bail!("trial {} of study `{}` is {}: only a complete trial's network is exported", t.number, study.name, t.state.as_str());
    }
    let config: Config = toml::from_str(&study.config).with_context(|| format!("stored config of study `{}`", study.name))?;
    let TaskConfig::Train(task_config) = &config.task else {
        bail!("study `{}` has no trained networks (its task is a table): nothing to export", study.name)
    };
    let arch: Architecture = serde_json::from_str(&t.arch_json).with_context(|| format!("trial {}", t.number))?;
    let task = TrainTask::new(task_config, config.space()?, task_config.proxy.clone(), false, Some(DeviceChoice::Cpu))?;
    let dir = checkpoint_dir(url, &study).with_context(|| format!("{url} keeps no checkpoints"))?.join(format!("trial-{}", t.number));
    // A study sharing its checkpoints: the shared one is the newest.
    if let Some(a) = &config.study.artifacts {
        let store = crate::artifacts::open(a).with_context(|| format!("[study] artifacts of study `{}`", study.name))?;
        let key = shared_key(&study, &format!("trial-{}", t.number));
        checkpoint::pull(&dir, &archsearch_tasks::SharedSlot { store, key });
    }
    let file = dir.join(checkpoint::FILE);
    let expected = task.fingerprint(&study.uid, format!("trial-{}", t.number), &arch);
    match checkpoint::fingerprint(&file) {
        Ok(Some(fp)) if fp == expected => {}
        Ok(_) => bail!("{}: not the checkpoint of trial {} of study `{}` (its fingerprint differs)", file.display(), t.number, study.name),
        Err(e) => bail!("{}: trial {} has no readable checkpoint: {e}", file.display(), t.number),
    }
    let about = serde_json::json!({
        "study": study.name,
        "trial": t.number,
        "seed": t.seed,
        "metrics": t.metrics,
    });
    let exported = archsearch_train::export::export(&task, &arch, &file, out, about)?;
    let verified = match python {
        Some(py) => {
            let batch = task.data().test.images.narrow(0, 0, 64.min(task.data().test.len()));
            Some(archsearch_train::export::verify(out, py, &exported.model, &batch)?)
        }
        None => None,
    };
    use archsearch_train::export::{ARCHITECTURE, PYTHON, WEIGHTS};
    Ok(Outcome {
        study: study.name.clone(),
        trial: t.number,
        arch: t.arch.clone(),
        epoch: exported.epoch,
        files: [ARCHITECTURE, WEIGHTS, PYTHON].iter().map(|f| out.join(f)).collect(),
        verified,
    })
}
