//! Trustworthy runs: a store never reports a number its own trial did not
//! produce, a config error never poisons a store, failures are data with
//! their cost, and the store only writes where it should. Each test is
//! named after the defect it pins.

mod common;
use common::{bin, run_ok, stderr_of};

use std::path::{Path, PathBuf};

fn show(db: &Path) -> serde_json::Value {
    let text = run_ok(&["show", db.to_str().unwrap(), "--json"]);
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A tiny Fashion-MNIST study (2 trials, 1 epoch on 2 % of the data) at `lr`.
fn training_config(dir: &Path, lr: f64) -> PathBuf {
    write(
        dir,
        "tiny.toml",
        &format!(
            r#"[study]
name = "tiny"
seed = 3
trials = 2
workers = 1

[space]
kind = "sequence"
length = 2
options = ["conv3x3", "maxpool3x3"]

[task]
kind = "train"
dataset = "fashion-mnist"
valid_fraction = 0.02
network = {{ kind = "macro", channels = 4, stem_stride = 2 }}
proxy = {{ epochs = 1, fraction = 0.02 }}
optimizer = {{ optimizer = "sgd", lr = {lr} }}

[strategy]
kind = "random"
"#
        ),
    )
}

fn values(v: &serde_json::Value) -> Vec<(String, Option<f64>, Option<f64>)> {
    v["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["arch"].as_str().unwrap().to_string(), t["value"].as_f64(), t["metrics"]["resumed_from_epoch"].as_f64()))
        .collect()
}

/// Deleting the `.db` and running again with another learning rate must not
/// pick up the old study's checkpoints: the result equals a run into an
/// empty folder.
#[test]
fn a_new_study_never_loads_the_checkpoints_of_a_deleted_one() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("s.db");
    let c = training_config(d.path(), 0.05);
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    assert!(d.path().join("s.db.ckpt/tiny/trial-0/checkpoint.safetensors").exists());
    std::fs::remove_file(&db).unwrap();
    let c = training_config(d.path(), 0.2);
    let out = bin()
        .args(["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"])
        .env("ARCHSEARCH_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(warnings.contains("checkpoint of another study") && warnings.contains("trial-0/checkpoint.safetensors"), "{warnings}");
    let reused = values(&show(&db));
    // The same config in an empty folder.
    let clean = tempfile::tempdir().unwrap();
    let c2 = training_config(clean.path(), 0.2);
    let db2 = clean.path().join("s.db");
    run_ok(&["run", c2.to_str().unwrap(), "--study", db2.to_str().unwrap(), "--quiet"]);
    let fresh = values(&show(&db2));
    assert_eq!(reused, fresh);
    assert!(reused.iter().all(|t| t.1.is_some() && t.2 == Some(0.0)), "{reused:?}");
}

/// A typo in `search_column` is an error that writes no study, so the fixed
/// config runs in the same store.
#[test]
fn a_config_error_does_not_poison_the_store() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("s.db");
    let bad = write(
        d.path(),
        "nb.toml",
        "[study]\ntrials = 5\n[task]\nkind = \"nb201\"\nsearch_column = \"c10valid_valid13\"\n[strategy]\nkind = \"random\"\n",
    );
    let e = stderr_of(&["run", bad.to_str().unwrap(), "--study", db.to_str().unwrap()]);
    assert!(e.contains("c10valid_valid13"), "{e}");
    let good = write(
        d.path(),
        "nb.toml",
        "[study]\ntrials = 5\n[task]\nkind = \"nb201\"\nsearch_column = \"c10valid_valid12\"\n[strategy]\nkind = \"random\"\n",
    );
    run_ok(&["run", good.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let v = show(&db);
    assert_eq!(v["complete"], 5);
    assert!(v["study"]["config"].as_str().unwrap().contains("c10valid_valid12"));
}

/// A table whose values are all NaN, under a cost budget: every trial fails
/// and is charged its cost, so the run ends by itself.
#[test]
fn an_all_nan_table_with_a_cost_budget_ends() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "space.toml", "");
    let mut csv = String::from("arch,acc,test,seconds\n");
    for a in ["a,a", "a,b", "b,a", "b,b"] {
        csv.push_str(&format!("\"{a}\",NaN,NaN,10\n"));
    }
    write(d.path(), "t.csv", &csv);
    let c = write(
        d.path(),
        "t.toml",
        "[study]\nname = \"nan\"\ncost = 50\n[space]\nkind = \"sequence\"\nlength = 2\noptions = [\"a\", \"b\"]\n\
         [task]\nkind = \"table\"\nfile = \"t.csv\"\nsearch_column = \"acc\"\nreport_column = \"test\"\ncost_column = \"seconds\"\n\
         [strategy]\nkind = \"random\"\n",
    );
    let db = d.path().join("s.db");
    let out = bin().args(["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = show(&db);
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 5, "10 s each against a budget of 50");
    assert!(trials.iter().all(|t| t["state"] == "FAIL" && t["cost"] == 10.0 && t["error"].as_str().unwrap().contains("NaN")), "{v}");
    assert_eq!(v["study"]["counts"]["cost"], 50.0);
}

/// A cost budget alone is the only limit: not silently capped at 100 trials.
#[test]
fn a_cost_only_budget_is_not_capped_at_100_trials() {
    let d = tempfile::tempdir().unwrap();
    let c =
        write(d.path(), "nb.toml", "[study]\ncost = 150\n[task]\nkind = \"nb201\"\ncost_per_query = 1.0\n[strategy]\nkind = \"random\"\n");
    let db = d.path().join("s.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    assert_eq!(show(&db)["trials"].as_array().unwrap().len(), 150);
    // A cost budget the task never spends is refused before anything is written.
    let c = write(d.path(), "free.toml", "[study]\ncost = 150\n[task]\nkind = \"nb201\"\n[strategy]\nkind = \"random\"\n");
    let e = stderr_of(&["run", c.to_str().unwrap(), "--study", d.path().join("free.db").to_str().unwrap()]);
    assert!(e.contains("cost = 150") && e.contains("never spends"), "{e}");
}

/// An existing study run with a changed config stops with the differing
/// fields; a larger budget extends it.
#[test]
fn a_changed_config_is_refused_and_a_larger_budget_extends() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("s.db");
    let cfg = |trials: u64, search: &str| {
        write(
            d.path(),
            "nb.toml",
            &format!(
                "[study]\ntrials = {trials}\n[task]\nkind = \"nb201\"\nsearch_column = \"{search}\"\n[strategy]\nkind = \"evolution\"\n"
            ),
        )
    };
    run_ok(&["run", cfg(20, "c10valid_valid12").to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let e = stderr_of(&["run", cfg(20, "c10valid_valid200").to_str().unwrap(), "--study", db.to_str().unwrap()]);
    assert!(e.contains("task.search_column") && e.contains("c10valid_valid12") && e.contains("c10valid_valid200"), "{e}");
    assert_eq!(show(&db)["trials"].as_array().unwrap().len(), 20, "nothing changed");
    run_ok(&["run", cfg(30, "c10valid_valid12").to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let v = show(&db);
    assert_eq!(v["trials"].as_array().unwrap().len(), 30);
    assert!(v["study"]["config"].as_str().unwrap().contains("trials = 30"));
    // The extended study equals one run to 30 from the start.
    let db2 = d.path().join("straight.db");
    run_ok(&["run", cfg(30, "c10valid_valid12").to_str().unwrap(), "--study", db2.to_str().unwrap(), "--quiet"]);
    let archs =
        |v: &serde_json::Value| v["trials"].as_array().unwrap().iter().map(|t| t["arch"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(archs(&v), archs(&show(&db2)));
}

/// `show` (and `run`) on another program's SQLite database: a clear error,
/// and the file is byte-for-byte unchanged.
#[test]
fn show_on_another_programs_database_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("other.db");
    {
        let c = rusqlite::Connection::open(&p).unwrap();
        c.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL); INSERT INTO orders VALUES (1, 9.5);").unwrap();
    }
    let before = std::fs::read(&p).unwrap();
    let e = stderr_of(&["show", p.to_str().unwrap()]);
    assert!(e.contains("other.db") && e.contains("not an archsearch study store"), "{e}");
    let nb = write(d.path(), "nb.toml", "[study]\ntrials = 3\n[task]\nkind = \"nb201\"\n[strategy]\nkind = \"random\"\n");
    let e = stderr_of(&["run", nb.to_str().unwrap(), "--study", p.to_str().unwrap()]);
    assert!(e.contains("not an archsearch study store"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2, "no -wal or -shm file appeared");
}

/// `show` on a missing path creates nothing; on a store it opens read-only
/// and leaves the file as it was.
#[test]
fn show_never_creates_or_changes_a_store() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("missing.db");
    let e = stderr_of(&["show", missing.to_str().unwrap()]);
    assert!(e.contains("missing.db"), "{e}");
    assert!(!missing.exists());
    let nb = write(d.path(), "nb.toml", "[study]\ntrials = 3\n[task]\nkind = \"nb201\"\n[strategy]\nkind = \"random\"\n");
    let db = d.path().join("s.db");
    run_ok(&["run", nb.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let before = std::fs::read(&db).unwrap();
    let mut perms = std::fs::metadata(&db).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&db, perms).unwrap();
    show(&db);
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

/// A study name is a folder name: it cannot reach outside the checkpoint folder.
#[test]
fn a_study_name_cannot_write_outside_its_checkpoint_folder() {
    let d = tempfile::tempdir().unwrap();
    for name in ["../../x", "a/b", "..", ""] {
        let c = write(
            d.path(),
            "n.toml",
            &format!("[study]\nname = {name:?}\ntrials = 2\n[task]\nkind = \"nb201\"\n[strategy]\nkind = \"random\"\n"),
        );
        let e = stderr_of(&["run", c.to_str().unwrap(), "--study", d.path().join("s.db").to_str().unwrap()]);
        assert!(e.contains("study name"), "{name}: {e}");
    }
    assert!(!d.path().join("s.db").exists(), "nothing was written");
}

/// A huge `--workers` is a clear error, not "unable to open database file".
#[test]
fn a_huge_worker_count_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let c = write(d.path(), "nb.toml", "[study]\ntrials = 2\n[task]\nkind = \"nb201\"\n[strategy]\nkind = \"random\"\n");
    let e = stderr_of(&["run", c.to_str().unwrap(), "--study", d.path().join("s.db").to_str().unwrap(), "--workers", "100000"]);
    assert!(e.contains("workers = 100000"), "{e}");
}

/// A network too large for memory is refused when the config is checked.
#[test]
fn a_width_that_cannot_fit_in_memory_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let c = write(
        d.path(),
        "w.toml",
        "[study]\ntrials = 1\n[space]\nkind = \"sequence\"\nlength = 2\noptions = [\"conv3x3\", \"identity\"]\n\
         [task]\nkind = \"train\"\ndataset = \"fashion-mnist\"\nnetwork = { kind = \"macro\" }\nproxy = { epochs = 1, width = 1e9 }\n\
         [strategy]\nkind = \"random\"\n",
    );
    let e = stderr_of(&["run", c.to_str().unwrap(), "--study", d.path().join("s.db").to_str().unwrap()]);
    assert!(e.contains("w.toml") && e.contains("width = 1000000000") && e.contains("memory"), "{e}");
}

/// NaN in a report column is shown as NaN, not dropped with the other metrics.
#[test]
fn nan_in_a_report_column_is_shown_as_nan() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "t.csv", "arch,acc,test\n\"a\",1.5,NaN\n\"b\",2.5,7\n");
    let c = write(
        d.path(),
        "t.toml",
        "[study]\ntrials = 2\n[space]\nkind = \"sequence\"\nlength = 1\noptions = [\"a\", \"b\"]\n\
         [task]\nkind = \"table\"\nfile = \"t.csv\"\nsearch_column = \"acc\"\nreport_column = \"test\"\n[strategy]\nkind = \"fixed\"\narchitectures = [\"a\", \"b\"]\n",
    );
    let db = d.path().join("s.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let v = show(&db);
    assert_eq!(v["trials"][0]["metrics"]["test"], "NaN");
    assert_eq!(v["trials"][0]["metrics"]["acc"], 1.5);
    let text = run_ok(&["show", db.to_str().unwrap()]);
    assert!(text.contains("test=NaN"), "{text}");
}

/// Writing to a full stdout is an error message, not a panic.
#[test]
fn writing_to_a_full_stdout_is_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let c = write(d.path(), "nb.toml", "[study]\ntrials = 3\n[task]\nkind = \"nb201\"\n[strategy]\nkind = \"random\"\n");
    let db = d.path().join("s.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = bin().args(["show", db.to_str().unwrap()]).stdout(full).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("writing to standard output") && !e.contains("panicked"), "{e}");
}

/// `bench-store` measures any strategy.
#[test]
fn bench_store_measures_any_strategy() {
    for s in ["asha", "reinforce-lstm", "hyperband"] {
        let out = run_ok(&["bench-store", "--strategy", s, "--trials", "200"]);
        assert!(out.contains("last block / first block"), "{s}: {out}");
    }
}

/// Ctrl-C (SIGINT) gives the running trial back: the next `run` runs it
/// again (from its checkpoint) without counting a crash, so interrupting a
/// study every morning never fails its trials.
#[test]
fn an_interrupted_trial_is_not_counted_as_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let c = training_config(d.path(), 0.05);
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace("epochs = 1, fraction = 0.02", "epochs = 12, fraction = 0.05")
        .replace("trials = 2", "trials = 1");
    std::fs::write(&c, text).unwrap();
    let db = d.path().join("s.db");
    let child = bin()
        .args(["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the trial has reported an epoch, then interrupt.
    let start = std::time::Instant::now();
    loop {
        assert!(start.elapsed().as_secs() < 120, "no epoch was reported");
        let out = bin().args(["show", db.to_str().unwrap(), "--json"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let v = text.lines().next().and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        if v.is_some_and(|v| {
            v["trials"].as_array().is_some_and(|t| t.iter().any(|t| t["intermediate"].as_array().is_some_and(|i| !i.is_empty())))
        }) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{e}");
    assert!(e.contains("1 running trial(s) released"), "{e}");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let v = show(&db);
    let t = &v["trials"][0];
    assert_eq!((t["state"].as_str(), t["attempts"].as_u64(), t["crashes"].as_u64()), (Some("COMPLETE"), Some(2), Some(0)), "{t}");
    assert!(t["metrics"]["resumed_from_epoch"].as_f64().unwrap() >= 1.0, "{t}");
}

/// Raising the budget of a study with a target fidelity runs again without
/// error: the retrained architecture is always the current best, in
/// `NAME.target` while that is unchanged and in a target study of its own
/// (`NAME.target-HASH`) once the longer search found another.
#[test]
fn raising_the_budget_of_a_study_with_a_target_runs_again() {
    let d = tempfile::tempdir().unwrap();
    let c = training_config(d.path(), 0.05);
    let base = std::fs::read_to_string(&c).unwrap().replace(
        "proxy = { epochs = 1, fraction = 0.02 }",
        "proxy = { epochs = 1, fraction = 0.02 }\ntarget = { epochs = 1, fraction = 0.03 }",
    );
    let db = d.path().join("s.db");
    let studies = || -> Vec<serde_json::Value> {
        run_ok(&["show", db.to_str().unwrap(), "--json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let mut bests = Vec::new();
    for trials in [1, 4] {
        std::fs::write(&c, base.replace("trials = 2", &format!("trials = {trials}"))).unwrap();
        let out = run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
        assert!(out.contains("retraining the best 1"), "{out}");
        let search = studies().into_iter().find(|s| s["study"]["name"] == "tiny").unwrap();
        assert_eq!(search["trials"].as_array().unwrap().len(), trials);
        bests.push(search["best"]["arch"].as_str().unwrap().to_string());
    }
    // Each best was retrained, by a target study whose only trial is it.
    let targets: Vec<(String, String)> = studies()
        .iter()
        .filter(|s| s["study"]["name"].as_str().unwrap().starts_with("tiny.target"))
        .map(|s| (s["study"]["name"].as_str().unwrap().to_string(), s["trials"][0]["arch"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(targets[0], ("tiny.target".to_string(), bests[0].clone()));
    if bests[0] == bests[1] {
        assert_eq!(targets.len(), 1, "{targets:?}");
    } else {
        assert_eq!(targets.len(), 2, "{targets:?}");
        assert!(targets[1].0.starts_with("tiny.target-") && targets[1].1 == bests[1], "{targets:?}");
    }
}
