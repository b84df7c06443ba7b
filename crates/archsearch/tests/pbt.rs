//! End-to-end tests of PBT / PBT-NAS on a tiny slice of Fashion-MNIST:
//! population history with lineage, resume after SIGKILL, every variant.

mod common;
use common::{bin, run_ok};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};



fn members(db: &Path) -> Vec<serde_json::Value> {
    let text = run_ok(&["show", db.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    v["members"].as_array().cloned().unwrap_or_default()
}

fn config(dir: &Path, name: &str, variant: &str, population: usize, epochs: usize) -> PathBuf {
    let text = format!(
        r#"[study]
name = "{name}"
seed = 2
workers = 2

[space]
kind = "sequence"
length = 3
options = ["conv3x3", "sep3x3", "maxpool3x3", "identity"]

[task]
kind = "train"
dataset = "fashion-mnist"
valid_fraction = 0.02
network = {{ kind = "macro", channels = 4, stem_stride = 2 }}
optimizer = {{ optimizer = "adam", lr = 0.01 }}
proxy = {{ fraction = 0.03 }}

[strategy]
kind = "pbt"
variant = "{variant}"
population = {population}
interval = 1
epochs = {epochs}
bottom = 0.5
top = 0.5
mix_probability = 0.5
"#
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_member_at_every_step_is_recorded_with_its_lineage() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "hist", "pbt-nas", 4, 3);
    let db = d.path().join("hist.db");
    let out = run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap()]);
    assert!(out.contains("test"), "{out}");
    let m = members(&db);
    assert_eq!(m.len(), 4 * 3);
    for rec in &m {
        let r = &rec["record"];
        assert!(r["arch"].as_str().unwrap().split(',').count() == 3);
        assert!(r["fitness"].as_f64().is_some(), "{r}");
    }
    // Children (from step 1 on) carry per-position lineage.
    let children: Vec<&serde_json::Value> = m.iter().filter(|x| x["record"]["event"] == "child").collect();
    assert!(!children.is_empty());
    for c in children {
        let lineage = c["record"]["lineage"].as_array().unwrap();
        assert_eq!(lineage.len(), 3);
        let parents = c["record"]["parents"].as_array().unwrap();
        for l in lineage {
            assert!(parents.contains(&l["parent"]), "{c}");
            assert!(["copied", "shrink_perturbed"].contains(&l["origin"].as_str().unwrap()));
        }
    }
    // The text view prints the population history.
    let text = run_ok(&["show", db.to_str().unwrap()]);
    assert!(text.contains("population history") && (text.contains("shrink_perturbed") || text.contains("copied")), "{text}");
}

/// Kills a PBT-NAS run after its first recorded step and reruns it: the
/// resumed run ends with the same population as an uninterrupted one.
#[test]
fn a_killed_run_resumes_to_the_same_population() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "resume", "pbt-nas", 4, 4);
    let db = d.path().join("resume.db");
    let mut child = bin()
        .args(["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut killed = false;
    while start.elapsed() < Duration::from_secs(180) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if db.exists() && !members(&db).is_empty() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait().unwrap();
    assert!(killed, "the run ended before it could be killed");
    let recorded = members(&db).len();
    assert!(recorded >= 4 && recorded < 16, "{recorded}");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let clean = d.path().join("clean.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", clean.to_str().unwrap(), "--quiet"]);
    let strip = |m: Vec<serde_json::Value>| m.into_iter().map(|x| x["record"].clone()).collect::<Vec<_>>();
    let (a, b) = (strip(members(&db)), strip(members(&clean)));
    assert_eq!(a.len(), 16);
    assert_eq!(a, b, "a resumed run must end with the same population as an uninterrupted one");
}

#[test]
fn compare_runs_every_variant() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "cmp", "pbt-nas", 4, 2);
    let db = d.path().join("cmp.db");
    let out = run_ok(&[
        "compare", c.to_str().unwrap(), "--variants", "pbt-nas,no-mixing,copy,reinit,mutation,pbt,random", "--seeds", "1", "--study",
        db.to_str().unwrap(), "--json",
    ]);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 7);
    for r in &rows {
        assert!(r["mean"].as_f64().unwrap() > 10.0, "{r}");
        assert_eq!(r["member_epochs"], 8);
    }
    let e = bin().args(["compare", c.to_str().unwrap(), "--variants", "nope"]).output().unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("unknown variant"));
}
