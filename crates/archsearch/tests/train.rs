//! End-to-end tests of training studies on real Fashion-MNIST (the Debian
//! package's files, a small slice of them): determinism, resume from a
//! checkpoint after SIGKILL, NaN losses, and checkpoints PyTorch can read.

mod common;
use common::{bin, run_ok};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn show(db: &Path) -> serde_json::Value {
    let text = run_ok(&["show", db.to_str().unwrap(), "--json"]);
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

/// A tiny macro-space study: `trials` trials of `epochs` epochs on ~2% of the data.
fn config(dir: &Path, name: &str, trials: u64, epochs: usize, extra_task: &str) -> PathBuf {
    let text = format!(
        r#"[study]
name = "{name}"
seed = 5
trials = {trials}
workers = 1

[space]
kind = "sequence"
length = 3
options = ["conv3x3", "sep3x3", "maxpool3x3", "identity"]

[task]
kind = "train"
dataset = "fashion-mnist"
valid_fraction = 0.02
network = {{ kind = "macro", channels = 4, stem_stride = 2 }}
proxy = {{ epochs = {epochs}, fraction = 0.04 }}
{extra_task}

[strategy]
kind = "evolution"
population = 2
sample = 2
"#
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn trial_rows(v: &serde_json::Value) -> Vec<(String, String, Option<f64>)> {
    v["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["state"].as_str().unwrap().into(), t["arch"].as_str().unwrap().into(), t["value"].as_f64()))
        .collect()
}

#[test]
fn same_config_and_seed_train_the_same_networks_to_the_same_accuracy() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "det", 3, 2, "optimizer = { optimizer = \"adam\", lr = 0.01 }");
    let (a, b) = (d.path().join("a.db"), d.path().join("b.db"));
    run_ok(&["run", c.to_str().unwrap(), "--study", a.to_str().unwrap(), "--quiet"]);
    run_ok(&["run", c.to_str().unwrap(), "--study", b.to_str().unwrap(), "--quiet"]);
    let (ta, tb) = (trial_rows(&show(&a)), trial_rows(&show(&b)));
    assert_eq!(ta.len(), 3);
    assert!(ta.iter().all(|t| t.0 == "COMPLETE" && t.2.unwrap() > 30.0), "{ta:?}");
    assert_eq!(ta, tb);
    // Intermediate values are recorded per epoch.
    let v = show(&a);
    assert_eq!(v["trials"][0]["intermediate"].as_array().unwrap().len(), 2);
}

#[test]
fn a_nan_loss_fails_the_trial_with_its_reason_and_the_study_goes_on() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "nan", 2, 1, "optimizer = { optimizer = \"sgd\", lr = 1e30, schedule = \"constant\" }");
    let db = d.path().join("nan.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let v = show(&db);
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2);
    for t in trials {
        assert_eq!(t["state"], "FAIL");
        let e = t["error"].as_str().unwrap();
        assert!(e.contains("NaN") || e.contains("inf"), "{e}");
    }
}

/// Kills a study mid-training (after its first checkpoint) and reruns it:
/// the trial resumes from the checkpoint, not from scratch, and ends exactly
/// where an uninterrupted run ends.
#[test]
fn a_killed_trial_resumes_from_its_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "resume", 1, 6, "optimizer = { optimizer = \"adam\", lr = 0.003 }");
    let db = d.path().join("resume.db");
    let ckpt = d.path().join("resume.db.ckpt/resume/trial-0/checkpoint.safetensors");
    let mut child = bin()
        .args(["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ckpt.exists() && start.elapsed() < Duration::from_secs(120) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its first checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ckpt.exists(), "no checkpoint after 120 s");
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let v = show(&db);
    let t = &v["trials"][0];
    assert_eq!(t["state"], "COMPLETE");
    assert_eq!(t["attempts"], 2);
    let resumed_from = t["metrics"]["resumed_from_epoch"].as_f64().unwrap();
    assert!(resumed_from >= 1.0, "resumed from epoch {resumed_from}: the checkpoint was not used");
    assert_eq!(t["intermediate"].as_array().unwrap().len(), 6);
    let clean = d.path().join("clean.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", clean.to_str().unwrap(), "--quiet"]);
    assert_eq!(t["value"], show(&clean)["trials"][0]["value"], "a resumed trial must end as an uninterrupted one");
}

/// Successive halving on real training: the promoted trial continues from
/// its checkpoint (1 epoch, then epochs 2–3 of the same 3-epoch schedule)
/// and ends exactly where a straight 3-epoch training of it ends; the others
/// are PRUNED at epoch 1.
#[test]
fn successive_halving_resumes_promoted_trials_from_their_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let evolution = "kind = \"evolution\"\npopulation = 2\nsample = 2\n";
    let c = config(d.path(), "sh", 3, 3, "");
    let text =
        std::fs::read_to_string(&c).unwrap().replace(evolution, "kind = \"successive-halving\"\nmin_budget = 1\nmax_budget = 3\nn = 3\n");
    std::fs::write(&c, text).unwrap();
    let db = d.path().join("sh.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let v = show(&db);
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 3);
    let epochs = |t: &serde_json::Value| t["intermediate"].as_array().unwrap().iter().map(|p| p[0].as_u64().unwrap()).collect::<Vec<_>>();
    let done: Vec<&serde_json::Value> = trials.iter().filter(|t| t["state"] == "COMPLETE").collect();
    assert_eq!(done.len(), 1);
    let t = done[0];
    assert_eq!((t["step"].as_u64(), epochs(t)), (Some(3), vec![1, 2, 3]));
    assert_eq!(t["metrics"]["resumed_from_epoch"], 1.0, "the promotion did not continue from the checkpoint");
    for p in trials.iter().filter(|t| t["state"] != "COMPLETE") {
        assert_eq!((p["state"].as_str(), p["step"].as_u64(), epochs(p)), (Some("PRUNED"), Some(1), vec![1]));
        assert!(p["value"].as_f64().unwrap() <= t["intermediate"][0][1].as_f64().unwrap(), "a better trial was pruned");
    }
    // The same architectures trained straight for 3 epochs, with the same trial seeds.
    let archs: Vec<String> = trials.iter().map(|t| format!("{:?}", t["arch"].as_str().unwrap())).collect();
    let c2 = config(d.path(), "straight", 3, 3, "");
    let text =
        std::fs::read_to_string(&c2).unwrap().replace(evolution, &format!("kind = \"fixed\"\narchitectures = [{}]\n", archs.join(", ")));
    std::fs::write(&c2, text).unwrap();
    let db2 = d.path().join("straight.db");
    run_ok(&["run", c2.to_str().unwrap(), "--study", db2.to_str().unwrap(), "--quiet"]);
    let straight = show(&db2);
    let n = t["number"].as_u64().unwrap() as usize;
    assert_eq!(t["value"], straight["trials"][n]["value"], "a promoted trial must end as a straight run does");
}

/// The checkpoint is a safetensors file that PyTorch's `safetensors` loader
/// reads, with the same tensor names (weights by position, optimiser state).
#[test]
fn checkpoints_load_in_pytorch_with_the_same_names() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let d = tempfile::tempdir().unwrap();
    // A known architecture, so the names are known: a conv at position 0, a
    // separable conv at 1 (after the first reduction), a pool (no weights) at 2.
    let c = config(d.path(), "st", 1, 1, "");
    let evolution = "kind = \"evolution\"\npopulation = 2\nsample = 2\n";
    let text =
        std::fs::read_to_string(&c).unwrap().replace(evolution, "kind = \"fixed\"\narchitectures = [\"conv3x3,sep3x3,maxpool3x3\"]\n");
    std::fs::write(&c, text).unwrap();
    let db = d.path().join("st.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let file = d.path().join("st.db.ckpt/st/trial-0/checkpoint.safetensors");
    let script = "import json,sys\nfrom safetensors.torch import load_file\nt=load_file(sys.argv[1])\nprint(json.dumps({k:[list(v.shape),str(v.dtype),float(v.double().sum())] for k,v in t.items()}))";
    let out = Command::new(&python).args(["-c", script, file.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tensors = v.as_object().unwrap();
    let keys: Vec<&String> = tensors.keys().collect();
    let shape = |k: &str| -> Vec<u64> { tensors[k][0].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect() };
    // Each name on its own.
    for k in [
        "stem.conv.weight",
        "pos0.conv.weight",
        "pos0.bn.running_mean",
        "pos0.bn.num_batches_tracked",
        "pos1.dw.weight",
        "pos1.pw.weight",
        "reduce1.conv.weight",
        "head.weight",
        "optim.head.weight.exp_avg",
        "optim.pos1.dw.weight.exp_avg",
        "meta.epoch",
    ] {
        assert!(tensors.contains_key(k), "{k} missing from {keys:?}");
    }
    // The network's tensors are exactly those of this architecture.
    let bn = |p: &str| ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"].map(|b| format!("{p}.bn.{b}"));
    let mut expected: Vec<String> = [
        "stem.conv.weight",
        "pos0.conv.weight",
        "pos1.dw.weight",
        "pos1.pw.weight",
        "reduce1.conv.weight",
        "reduce2.conv.weight",
        "head.weight",
        "head.bias",
    ]
    .map(String::from)
    .into_iter()
    .chain(["stem", "pos0", "pos1", "reduce1", "reduce2"].into_iter().flat_map(bn))
    .collect();
    expected.sort();
    let mut model: Vec<&String> = keys.iter().copied().filter(|k| !k.starts_with("optim.") && !k.starts_with("meta.")).collect();
    model.sort();
    assert_eq!(model, expected.iter().collect::<Vec<_>>(), "a pool owns no weights; every other tensor is named by its position");
    assert_eq!(shape("pos0.conv.weight"), vec![4, 4, 3, 3]);
    assert_eq!(shape("pos1.dw.weight"), vec![8, 1, 3, 3]);
    assert_eq!(shape("head.weight"), vec![10, 16]);
    // Optimiser state is named after the parameter it belongs to, with its shape.
    let optim: Vec<&String> = keys.iter().copied().filter(|k| k.starts_with("optim.")).collect();
    assert!(!optim.is_empty());
    for k in optim {
        let (param, _buffer) = k["optim.".len()..].rsplit_once('.').unwrap();
        assert!(
            tensors.contains_key(param) && !param.ends_with("running_mean") && !param.ends_with("num_batches_tracked"),
            "{k}: no such trained parameter"
        );
        assert_eq!(shape(k), shape(param), "{k}");
    }
    assert_eq!(v["meta.epoch"][1], "torch.int64");
    assert_eq!(v["stem.bn.num_batches_tracked"][1], "torch.int64");
    assert_eq!(v["pos0.bn.num_batches_tracked"][1], "torch.int64");
    assert_eq!(v["meta.epoch"][2], 1.0);
}

#[test]
fn cuda_asked_for_without_cuda_is_a_clear_error() {
    if archsearch_train_has_cuda() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "cuda", 1, 1, "device = \"cuda\"");
    let out = bin().args(["run", c.to_str().unwrap(), "--study", d.path().join("c.db").to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("CUDA") && e.contains("not available"), "{e}");
}

fn archsearch_train_has_cuda() -> bool {
    tch::Cuda::is_available()
}
