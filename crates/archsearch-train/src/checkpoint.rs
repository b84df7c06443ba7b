//! Checkpoints that belong to exactly one trial or population member.
//!
//! A checkpoint is a safetensors file of named tensors (weights, buffers,
//! optimiser state, `meta.*` counters) whose header metadata carries the
//! [`Fingerprint`] of its owner: the study's unique id, `trial-N` or
//! `member-N`, the canonical architecture and a hash of the config that
//! shapes the weights. PyTorch reads it as any safetensors file
//! (`safe_open(path).metadata()` shows the fingerprint).
//!
//! Writing is atomic and keeps the previous checkpoint: the new file is
//! written beside, the current one becomes `checkpoint.prev.safetensors`,
//! and the new one takes its place. Loading takes the newest checkpoint that
//! is readable and carries the expected fingerprint; any other file is moved
//! into `stale/` beside it with a warning naming it, and never used. With no
//! usable checkpoint, training starts from scratch.
//!
//! A checkpoint also names the runner that wrote it (`archsearch.writer`,
//! not part of the fingerprint). When a study shares its checkpoints
//! through an artifact store ([`SharedSlot`]), the local folder is a cache:
//! [`pull`] takes the shared checkpoint before training resumes (it is the
//! newest: every write is pushed), and [`push`] shares each new one.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use archsearch_tasks::{Fingerprint, SharedSlot};
use safetensors::tensor::{Dtype, View};
use tch::{Kind, Tensor};

use crate::TrainError;

/// The current checkpoint of a folder.
pub const FILE: &str = "checkpoint.safetensors";
/// The one before it (the fallback when the current one is unreadable).
pub const PREVIOUS: &str = "checkpoint.prev.safetensors";
const TEMPORARY: &str = "checkpoint.safetensors.tmp";
/// Where unusable checkpoints are moved.
pub const STALE: &str = "stale";

/// The metadata keys of a fingerprint.
const KEYS: [&str; 4] = ["archsearch.study", "archsearch.owner", "archsearch.arch", "archsearch.config"];
/// The metadata key of the runner that wrote a checkpoint.
const WRITER: &str = "archsearch.writer";
/// The metadata key of every runner that trained the checkpoint's owner so
/// far, in order (comma-separated).
const WRITERS: &str = "archsearch.writers";
/// The metadata key of the epoch a checkpoint resumes at (its `meta.epoch`),
/// readable without the tensors: a shared checkpoint never replaces a newer
/// local one.
const EPOCH: &str = "archsearch.epoch";

fn to_metadata(fp: &Fingerprint) -> HashMap<String, String> {
    let values = [&fp.study, &fp.owner, &fp.arch, &fp.config];
    KEYS.iter().zip(values).map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn from_metadata(m: &HashMap<String, String>) -> Option<Fingerprint> {
    let get = |k: &str| m.get(k).cloned();
    Some(Fingerprint { study: get(KEYS[0])?, owner: get(KEYS[1])?, arch: get(KEYS[2])?, config: get(KEYS[3])? })
}

/// A CPU, contiguous tensor as safetensors sees it.
struct CpuView {
    tensor: Tensor,
    shape: Vec<usize>,
    dtype: Dtype,
}

impl CpuView {
    fn new(name: &str, t: &Tensor) -> Result<Self, TrainError> {
        let tensor = t.detach().to_device(tch::Device::Cpu).contiguous();
        let dtype = match tensor.kind() {
            Kind::Bool => Dtype::BOOL,
            Kind::Uint8 => Dtype::U8,
            Kind::Int8 => Dtype::I8,
            Kind::Int16 => Dtype::I16,
            Kind::Int => Dtype::I32,
            Kind::Int64 => Dtype::I64,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            Kind::Float => Dtype::F32,
            Kind::Double => Dtype::F64,
            k => return Err(TrainError::Checkpoint(format!("tensor `{name}` has a kind safetensors cannot hold ({k:?})"))),
        };
        let shape = tensor.size().iter().map(|&d| d as usize).collect();
        Ok(CpuView { tensor, shape, dtype })
    }
}

impl View for &CpuView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let mut data = vec![0u8; self.data_len()];
        let numel = self.tensor.numel();
        self.tensor.copy_data_u8(&mut data, numel);
        data.into()
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

/// Writes `tensors` as the checkpoint of `dir`, owned by `fp` (atomically,
/// keeping the previous checkpoint as the fallback), written by this process.
pub fn write(dir: &Path, tensors: &BTreeMap<String, Tensor>, fp: &Fingerprint) -> Result<(), TrainError> {
    write_by(dir, tensors, fp, &[format!("pid {}", std::process::id())])
}

/// [`write`], naming the runners that trained the owner so far, the last
/// one being the runner that writes it.
pub fn write_by(dir: &Path, tensors: &BTreeMap<String, Tensor>, fp: &Fingerprint, writers: &[String]) -> Result<(), TrainError> {
    let err = |p: &Path, e: &dyn std::fmt::Display| TrainError::Checkpoint(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| err(dir, &e))?;
    // A name of this writer's own: two runners that both think they own a
    // trial never write into one temporary file.
    let tmp = temporary(dir);
    let mut metadata = to_metadata(fp);
    if let Some(last) = writers.last() {
        metadata.insert(WRITER.into(), last.clone());
    }
    metadata.insert(WRITERS.into(), writers.join(","));
    if let Some(epoch) = tensors.get("meta.epoch") {
        metadata.insert(EPOCH.into(), epoch.int64_value(&[]).to_string());
    }
    write_file(&tmp, tensors, metadata)?;
    install(dir, &tmp).map_err(|e| err(dir, &e))
}

/// A temporary file name in `dir` that no other writer uses.
fn temporary(dir: &Path) -> PathBuf {
    dir.join(format!("{TEMPORARY}.{}.{:x}", std::process::id(), rand::random::<u64>()))
}

/// Makes the finished file `tmp` the current checkpoint of `dir`; the
/// current one becomes the previous one.
fn install(dir: &Path, tmp: &Path) -> std::io::Result<()> {
    let (current, previous) = (dir.join(FILE), dir.join(PREVIOUS));
    if current.exists() {
        std::fs::rename(&current, previous)?;
    }
    std::fs::rename(tmp, current)
}

/// Takes the shared checkpoint of a slot into `dir` (as its current one,
/// the local one becoming the previous), unless `dir` already holds that
/// very file. A shared store that cannot be read is a warning: training
/// then resumes from the local checkpoint, or from scratch.
pub fn pull(dir: &Path, shared: &SharedSlot) {
    let fetched = std::fs::create_dir_all(dir).map_err(|e| e.to_string()).and_then(|()| {
        let tmp = temporary(dir);
        match shared.store.get(&shared.key, &tmp) {
            Ok(true) => Ok(Some(tmp)),
            Ok(false) => Ok(None),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    });
    match fetched {
        Ok(Some(tmp)) => {
            let local = dir.join(FILE);
            let same = std::fs::read(&local).ok().is_some_and(|l| std::fs::read(&tmp).ok().is_some_and(|remote| remote == l));
            // A shared checkpoint older than the local one (a late push by a
            // runner that had lost the trial) is not taken.
            let epoch = |p: &Path| metadata(p).ok().and_then(|m| m.get(EPOCH).and_then(|e| e.parse::<i64>().ok()));
            let older = matches!((epoch(&tmp), epoch(&local)), (Some(shared_epoch), Some(local_epoch)) if shared_epoch < local_epoch);
            if older {
                tracing::warn!(dir = %dir.display(), key = %shared.key, "the shared checkpoint is older than this one: kept this one");
            }
            let done = if same || older { std::fs::remove_file(&tmp) } else { install(dir, &tmp) };
            if let Err(e) = done {
                tracing::warn!(dir = %dir.display(), error = %e, "could not install the shared checkpoint");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(store = shared.store.url(), key = %shared.key, error = %e, "could not read the shared checkpoint"),
    }
}

/// Shares the current checkpoint of `dir`. A failure is a warning: the
/// trial goes on, and a worker resuming it elsewhere starts from an older
/// checkpoint (or from scratch), with the same result, since a run's
/// randomness is a function of (seed, epoch).
pub fn push(dir: &Path, shared: &SharedSlot) {
    if let Err(e) = shared.store.put(&shared.key, &dir.join(FILE)) {
        tracing::warn!(store = shared.store.url(), key = %shared.key, error = %e, "could not share the checkpoint");
    }
}

/// Writes `tensors` (any device) to the safetensors file `path` with `metadata` in its header.
pub fn write_file(path: &Path, tensors: &BTreeMap<String, Tensor>, metadata: HashMap<String, String>) -> Result<(), TrainError> {
    let views: Vec<(&str, CpuView)> =
        tensors.iter().map(|(n, t)| Ok((n.as_str(), CpuView::new(n, t)?))).collect::<Result<_, TrainError>>()?;
    safetensors::tensor::serialize_to_file(views.iter().map(|(n, v)| (*n, v)), &Some(metadata), path)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
}

/// The fingerprint in a checkpoint's header (read without the tensors).
pub fn fingerprint(path: &Path) -> Result<Option<Fingerprint>, String> {
    Ok(from_metadata(&metadata(path)?))
}

/// The metadata in a safetensors file's header (read without the tensors).
fn metadata(path: &Path) -> Result<HashMap<String, String>, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| "truncated header".to_string())?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(format!("header of {len} bytes: not a safetensors file"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|_| "truncated header".to_string())?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| format!("unreadable header: {e}"))?;
    match header.get("__metadata__") {
        Some(m) => serde_json::from_value(m.clone()).map_err(|e| format!("unreadable metadata: {e}")),
        None => Ok(HashMap::new()),
    }
}

/// Reads every tensor of a checkpoint file (checking that it is whole).
pub fn read_file(path: &Path) -> Result<BTreeMap<String, Tensor>, TrainError> {
    Ok(Tensor::read_safetensors(path).map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?.into_iter().collect())
}

/// Moves an unusable checkpoint into `stale/` beside it; returns where.
fn move_aside(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?.join(STALE);
    std::fs::create_dir_all(&dir).ok()?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let to = dir.join(format!("{}.{stamp}", path.file_name()?.to_string_lossy()));
    std::fs::rename(path, &to).ok()?;
    Some(to)
}

fn set_aside(path: &Path, why: &str) {
    match move_aside(path) {
        Some(to) => tracing::warn!(checkpoint = %path.display(), moved_to = %to.display(), "{why}: not used, moved aside"),
        None => {
            let _ = std::fs::remove_file(path);
            tracing::warn!(checkpoint = %path.display(), "{why}: not used, removed");
        }
    }
}

/// What [`load`] does with a checkpoint's tensors: takes what it needs, or
/// refuses them.
pub type Accept<'a, T> = dyn FnMut(&BTreeMap<String, Tensor>) -> Result<T, TrainError> + 'a;

/// Loads the newest usable checkpoint of `dir` that belongs to `fp`:
/// `accept` gets its tensors and returns what the caller needs, or an error
/// if the tensors do not fit (they must be checked before anything is
/// changed). Every file found unusable on the way (another owner, no
/// fingerprint, truncated, unreadable, not fitting) is moved aside with a
/// warning. `None`: no usable checkpoint, start from scratch.
pub fn load<T>(dir: &Path, fp: &Fingerprint, accept: &mut Accept<'_, T>) -> Option<T> {
    load_with_writers(dir, fp, accept).map(|(v, _)| v)
}

/// [`load`], also returning the runners that trained the checkpoint taken,
/// in order, the last one having written it (empty when it does not say).
pub fn load_with_writers<T>(dir: &Path, fp: &Fingerprint, accept: &mut Accept<'_, T>) -> Option<(T, Vec<String>)> {
    for name in [FILE, PREVIOUS] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let meta = metadata(&path);
        let writers: Vec<String> = match meta.as_ref().ok().and_then(|m| m.get(WRITERS).or_else(|| m.get(WRITER))) {
            Some(list) => list.split(',').filter(|w| !w.is_empty()).map(str::to_string).collect(),
            None => Vec::new(),
        };
        match meta.map(|m| from_metadata(&m)) {
            Err(e) => {
                set_aside(&path, &format!("unreadable checkpoint ({e})"));
                continue;
            }
            Ok(None) => {
                set_aside(&path, "checkpoint without a fingerprint (from an older archsearch or another program)");
                continue;
            }
            Ok(Some(found)) if &found != fp => {
                let what = if found.study != fp.study {
                    format!("checkpoint of another study (id {}, not {})", found.study, fp.study)
                } else if found.owner != fp.owner {
                    format!("checkpoint of {}, not {}", found.owner, fp.owner)
                } else if found.arch != fp.arch {
                    format!("checkpoint of architecture `{}`, not `{}`", found.arch, fp.arch)
                } else {
                    "checkpoint made with another network, fidelity, optimiser or data config".to_string()
                };
                set_aside(&path, &what);
                continue;
            }
            Ok(Some(_)) => {}
        }
        let accepted = read_file(&path).and_then(|t| accept(&t));
        match accepted {
            Ok(v) => return Some((v, writers)),
            Err(e) => set_aside(&path, &format!("unusable checkpoint ({e})")),
        }
    }
    None
}

/// Reads the newest usable checkpoint of `dir` that belongs to `fp`, as
/// named tensors (see [`load`]).
pub fn read(dir: &Path, fp: &Fingerprint) -> Option<BTreeMap<String, Tensor>> {
    load(dir, fp, &mut |t| Ok(t.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(owner: &str) -> Fingerprint {
        Fingerprint { study: "s1".into(), owner: owner.into(), arch: "a,b".into(), config: "c".into() }
    }

    fn tensors(x: f32) -> BTreeMap<String, Tensor> {
        BTreeMap::from([("w".to_string(), Tensor::from_slice(&[x, x + 1.0])), ("meta.epoch".to_string(), Tensor::from(3i64))])
    }

    fn value(t: &BTreeMap<String, Tensor>) -> f64 {
        t["w"].double_value(&[0])
    }

    #[test]
    fn a_checkpoint_is_read_back_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &tensors(1.0), &fp("trial-0")).unwrap();
        assert_eq!(fingerprint(&dir.path().join(FILE)).unwrap(), Some(fp("trial-0")));
        assert_eq!(read(dir.path(), &fp("trial-0")).map(|t| value(&t)), Some(1.0));
        // Another owner: never used, moved aside with both files.
        write(dir.path(), &tensors(2.0), &fp("trial-0")).unwrap();
        assert!(read(dir.path(), &fp("trial-1")).is_none());
        assert!(!dir.path().join(FILE).exists() && !dir.path().join(PREVIOUS).exists());
        assert_eq!(std::fs::read_dir(dir.path().join(STALE)).unwrap().count(), 2);
        for changed in [
            Fingerprint { study: "s2".into(), ..fp("trial-0") },
            Fingerprint { arch: "b,b".into(), ..fp("trial-0") },
            Fingerprint { config: "d".into(), ..fp("trial-0") },
        ] {
            write(dir.path(), &tensors(1.0), &fp("trial-0")).unwrap();
            assert!(read(dir.path(), &changed).is_none(), "{changed:?}");
        }
    }

    /// A truncated checkpoint falls back to the previous one, then to scratch.
    #[test]
    fn a_truncated_checkpoint_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &tensors(1.0), &fp("trial-0")).unwrap();
        write(dir.path(), &tensors(2.0), &fp("trial-0")).unwrap();
        let cur = dir.path().join(FILE);
        let bytes = std::fs::read(&cur).unwrap();
        std::fs::write(&cur, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(read(dir.path(), &fp("trial-0")).map(|t| value(&t)), Some(1.0));
        std::fs::write(dir.path().join(FILE), b"garbage").unwrap();
        std::fs::write(dir.path().join(PREVIOUS), b"").unwrap();
        assert!(read(dir.path(), &fp("trial-0")).is_none());
    }

    /// A folder standing in for a shared artifact store.
    #[derive(Debug)]
    struct Folder(PathBuf);

    impl archsearch_tasks::Artifacts for Folder {
        fn put(&self, key: &str, from: &Path) -> Result<(), String> {
            let to = self.0.join(key);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(from, to).map(|_| ()).map_err(|e| e.to_string())
        }
        fn get(&self, key: &str, to: &Path) -> Result<bool, String> {
            let from = self.0.join(key);
            Ok(from.exists() && std::fs::copy(from, to).is_ok())
        }
        fn url(&self) -> &str {
            "test"
        }
    }

    fn at_epoch(x: f32, epoch: i64) -> BTreeMap<String, Tensor> {
        let mut t = tensors(x);
        t.insert("meta.epoch".into(), Tensor::from(epoch));
        t
    }

    /// A worker pulls the shared checkpoint unless its own is newer (a late
    /// push by a runner that had lost the trial never rolls it back).
    #[test]
    fn a_shared_checkpoint_is_taken_unless_the_local_one_is_newer() {
        let (shared, a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let slot = SharedSlot { store: std::sync::Arc::new(Folder(shared.path().to_path_buf())), key: "s/trial-0/c".into() };
        let w = |dir: &Path, x: f32, epoch: i64| write_by(dir, &at_epoch(x, epoch), &fp("trial-0"), &["r".into()]).unwrap();
        w(a.path(), 5.0, 5);
        push(a.path(), &slot);
        pull(b.path(), &slot);
        assert_eq!(read(b.path(), &fp("trial-0")).map(|t| value(&t)), Some(5.0), "taken by a worker without one");
        w(a.path(), 3.0, 3);
        push(a.path(), &slot);
        pull(b.path(), &slot);
        assert_eq!(read(b.path(), &fp("trial-0")).map(|t| value(&t)), Some(5.0), "an older shared one is not taken");
        w(a.path(), 7.0, 7);
        push(a.path(), &slot);
        pull(b.path(), &slot);
        assert_eq!(read(b.path(), &fp("trial-0")).map(|t| value(&t)), Some(7.0), "a newer shared one is");
    }

    /// A checkpoint whose tensors do not fit is set aside, not half-loaded.
    #[test]
    fn a_refused_checkpoint_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &tensors(1.0), &fp("trial-0")).unwrap();
        let got: Option<()> = load(dir.path(), &fp("trial-0"), &mut |_| Err(TrainError::Checkpoint("shape".into())));
        assert!(got.is_none() && !dir.path().join(FILE).exists());
    }
}
