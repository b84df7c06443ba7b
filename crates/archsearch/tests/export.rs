//! `archsearch export`: for every network family, a trained trial exported
//! to `model.py` + `model.safetensors` + `architecture.json`, and verified
//! with the venv's PyTorch (its logits equal archsearch's to 1e-5).

mod common;
use common::{run_ok, stderr_of};

use std::path::{Path, PathBuf};

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
}

/// A one-trial study of `space` and `network` on a sliver of Fashion-MNIST.
fn study(dir: &Path, name: &str, space: &str, network: &str, fidelity: &str) -> PathBuf {
    let text = format!(
        r#"[study]
name = "{name}"
seed = 3
trials = 2
workers = 1

[space]
{space}

[task]
kind = "train"
dataset = "fashion-mnist"
valid_fraction = 0.02
network = {network}
proxy = {{ epochs = 1, fraction = 0.02{fidelity} }}

[strategy]
kind = "random"
"#
    );
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).unwrap();
    let db = dir.join(format!("{name}.db"));
    run_ok(&["run", config.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    db
}

/// The tensor names in a safetensors file's header.
fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.keys().filter(|k| *k != "__metadata__").cloned().collect()
}

fn export_and_verify(db: &Path, out: &Path) -> String {
    run_ok(&["export", db.to_str().unwrap(), "-o", out.to_str().unwrap(), "--verify", "--python", python().to_str().unwrap()])
}

#[test]
fn every_network_family_exports_to_a_pytorch_module_with_equal_logits() {
    let d = tempfile::tempdir().unwrap();
    let families = [
        (
            "macro",
            "kind = \"sequence\"\nlength = 4\noptions = [\"conv3x3\", \"conv5x5\", \"sep3x3\", \"sep5x5\", \"dil3x3\", \"maxpool3x3\", \"avgpool3x3\", \"identity\"]",
            "{ kind = \"macro\", channels = 4, stem_stride = 2 }",
            // Half width, every op twice: the exported module is built at the trial's fidelity.
            ", width = 0.5, repeats = 2",
        ),
        ("nb201", "kind = \"nb201\"", "{ kind = \"nb201\", channels = 4, cells = 1 }", ""),
        (
            "mlp",
            r#"kind = "custom"
decisions = [
  { name = "layer0.width", options = ["16", "32"] },
  { name = "layer0.act", options = ["gelu", "tanh"] },
  { name = "layer0.norm", options = ["layernorm"] },
  { name = "layer1.width", options = ["16", "32"] },
  { name = "layer1.act", options = ["sigmoid", "relu"] },
  { name = "layer1.residual", options = ["yes"] },
]"#,
            "{ kind = \"mlp\" }",
            "",
        ),
    ];
    for (name, space, network, fidelity) in families {
        let db = study(d.path(), name, space, network, fidelity);
        let out = d.path().join(format!("{name}-export"));
        let text = export_and_verify(&db, &out);
        assert!(text.contains("verified: PyTorch's logits on 64 test images equal archsearch's"), "{name}: {text}");
        // The weights alone: no optimiser state, no training metadata.
        let names = tensor_names(&out.join("model.safetensors"));
        assert!(!names.is_empty() && names.iter().all(|n| !n.starts_with("meta.") && !n.starts_with("opt")), "{name}: {names:?}");
        assert!(names.iter().any(|n| n.starts_with("pos")), "{name}: {names:?}");
        let arch: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("architecture.json")).unwrap()).unwrap();
        assert_eq!(arch["study"], name);
        assert!(arch["architecture"].as_str().is_some() && arch["input"]["shape"].is_array(), "{name}: {arch}");
        // The README's lines, from another folder: model.py needs only torch.
        let script = "import sys; sys.path.insert(0, sys.argv[1])\nimport model\nnet = model.load()\n\
                      import torch\nprint(sorted(net.state_dict()) == sorted(model.read_safetensors(sys.argv[1] + '/model.safetensors')), net.training)";
        let run = std::process::Command::new(python()).args(["-c", script, out.to_str().unwrap()]).current_dir(d.path()).output().unwrap();
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));
        assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "True False", "{name}");
    }
}

#[test]
fn export_refuses_what_it_cannot_export_and_names_it() {
    let d = tempfile::tempdir().unwrap();
    let db = study(
        d.path(),
        "m",
        "kind = \"sequence\"\nlength = 2\noptions = [\"conv3x3\", \"identity\"]",
        "{ kind = \"macro\", channels = 4, stem_stride = 2 }",
        "",
    );
    let out = d.path().join("out");
    let e = stderr_of(&["export", db.to_str().unwrap(), "--trial", "7", "-o", out.to_str().unwrap()]);
    assert!(e.contains("no trial 7"), "{e}");
    // A checkpoint that is another trial's (copied over) is refused by its fingerprint.
    let ckpt = |n: u64| PathBuf::from(format!("{}.ckpt/m/trial-{n}/checkpoint.safetensors", db.display()));
    std::fs::copy(ckpt(1), ckpt(0)).unwrap();
    let e = stderr_of(&["export", db.to_str().unwrap(), "--trial", "0", "-o", out.to_str().unwrap()]);
    assert!(e.contains("trial-0/checkpoint.safetensors") && e.contains("fingerprint"), "{e}");
    // A table study has no networks.
    let table = d.path().join("nb.toml");
    std::fs::write(&table, "[study]\nname = \"nb\"\ntrials = 3\n[task]\nkind = \"nb201\"\n[strategy]\nkind = \"random\"\n").unwrap();
    let nb = d.path().join("nb.db");
    run_ok(&["run", table.to_str().unwrap(), "--study", nb.to_str().unwrap(), "--quiet"]);
    let e = stderr_of(&["export", nb.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(e.contains("nothing to export"), "{e}");
    assert!(!out.exists(), "nothing is written when export is refused");
}
