//! `archsearch proxy-check` on NAS-Bench-201 (all cells) and on real
//! training (a tiny slice of Fashion-MNIST), and its errors.

mod common;
use common::{bin, run_ok};

use std::path::Path;

fn rows(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn nb201_proxy_check_prints_every_measure_per_proxy() {
    let d = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nb201-proxy.toml");
    let db = d.path().join("p.db");
    let r = rows(&run_ok(&["proxy-check", example.to_str().unwrap(), "--json", "--study", db.to_str().unwrap()]));
    assert_eq!(r.len(), 5);
    for x in &r {
        for k in ["proxy", "kendall_tau", "spearman_rho", "topk_overlap", "regret", "cost_ratio"] {
            assert!(!x[k].is_null(), "{k} missing in {x}");
        }
        assert_eq!(x["architectures"], 15625);
        let tau = x["kendall_tau"].as_f64().unwrap();
        assert!(tau > 0.3 && tau < 1.0, "{x}");
        assert!(x["spearman_rho"].as_f64().unwrap() > tau, "ρ exceeds τ for monotone data: {x}");
        assert!(x["regret"].as_f64().unwrap() >= 0.0);
    }
    assert!((r[0]["cost_ratio"].as_f64().unwrap() - 0.06).abs() < 1e-12);
    // The results are stored with the study.
    let show: serde_json::Value = serde_json::from_str(run_ok(&["show", db.to_str().unwrap(), "--json"]).lines().next().unwrap()).unwrap();
    assert_eq!(show["study"]["name"], "nb201-proxy");
}

#[test]
fn training_proxy_check_trains_each_fidelity_once_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let cfg = r#"[study]
name = "tiny-proxy"
seed = 1
workers = 2

[space]
kind = "sequence"
length = 2
options = ["conv3x3", "maxpool3x3", "identity"]

[task]
kind = "train"
dataset = "fashion-mnist"
valid_fraction = 0.02
network = { kind = "macro", channels = 4, stem_stride = 2 }
target = { epochs = 2, fraction = 0.03 }

[check]
architectures = 4
top_fraction = 0.5
proxies = [
    { name = "1-epoch", fidelity = { epochs = 1, fraction = 0.03 } },
    { name = "half-width", fidelity = { epochs = 1, width = 0.5, fraction = 0.03 } },
]
"#;
    let c = d.path().join("tiny.toml");
    std::fs::write(&c, cfg).unwrap();
    let db = d.path().join("tiny.db");
    let first = rows(&run_ok(&["proxy-check", c.to_str().unwrap(), "--json", "--study", db.to_str().unwrap()]));
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["architectures"], 4);
    assert!(first[0]["cost_ratio"].as_f64().unwrap() > 0.0);
    // A second run reuses every evaluation: the same numbers, no new trials.
    let again = rows(&run_ok(&["proxy-check", c.to_str().unwrap(), "--json", "--study", db.to_str().unwrap()]));
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a["kendall_tau"], b["kendall_tau"]);
    }
    let shown = run_ok(&["show", db.to_str().unwrap(), "--json"]);
    let studies: Vec<serde_json::Value> = shown.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let per_fidelity: Vec<usize> = studies
        .iter()
        .filter(|s| s["study"]["name"].as_str().unwrap().starts_with("tiny-proxy."))
        .map(|s| s["trials"].as_array().unwrap().len())
        .collect();
    assert_eq!(per_fidelity, vec![4, 4, 4]);
}

#[test]
fn a_table_check_without_pairs_is_an_error_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("nopairs.toml");
    std::fs::write(&c, "[task]\nkind = \"nb201\"\n[check]\n").unwrap();
    let out = bin().args(["proxy-check", c.to_str().unwrap(), "--study", d.path().join("x.db").to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("nopairs.toml") && e.contains("pairs"), "{e}");
}
