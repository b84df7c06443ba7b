//! End-to-end tests of the `archsearch` binary: config errors, resume after
//! SIGKILL, two processes on one study, determinism, `show --json`.

mod common;
use common::{bin, run_ok, stderr_of};

use std::path::{Path, PathBuf};

use std::time::Duration;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `show --json` of a one-study store; a store killed before its study was
/// created (or before its first write: an empty file, which `show` refuses)
/// shows no trials.
fn show_json(db: &Path) -> serde_json::Value {
    if std::fs::metadata(db).is_ok_and(|m| m.len() == 0) {
        return serde_json::json!({ "trials": [] });
    }
    let out = run_ok(&["show", db.to_str().unwrap(), "--json"]);
    if out.trim().is_empty() {
        return serde_json::json!({ "trials": [] });
    }
    serde_json::from_str(&out).unwrap()
}

/// The error of `bench --task table` on `table` and `space`, searching and
/// reporting `column`.
fn bench_table_error(table: &Path, space: &Path, column: &str) -> String {
    let (t, s) = (table.to_str().unwrap(), space.to_str().unwrap());
    stderr_of(&["bench", "--task", "table", "--table", t, "--space", s, "--search-column", column, "--report-column", column])
}

/// `(number, state, arch, value)` of every trial.
fn trials(db: &Path) -> Vec<(u64, String, String, Option<f64>)> {
    let v = show_json(db);
    v["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["number"].as_u64().unwrap(),
                t["state"].as_str().unwrap().to_string(),
                t["arch"].as_str().unwrap().to_string(),
                t["value"].as_f64(),
            )
        })
        .collect()
}

const NB201: &str = "[study]\nseed = 3\ntrials = TRIALS\n[task]\nkind = \"nb201\"\n[strategy]\nkind = \"STRATEGY\"\n";

fn nb201_config(dir: &Path, name: &str, strategy: &str, trials: u64) -> PathBuf {
    write(dir, &format!("{name}.toml"), &NB201.replace("TRIALS", &trials.to_string()).replace("STRATEGY", strategy))
}

#[test]
fn malformed_toml_names_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let c = write(d.path(), "broken.toml", "[study]\ntrials = 10\n[task\nkind = \"nb201\"\n");
    let e = stderr_of(&["run", c.to_str().unwrap(), "--study", d.path().join("s.db").to_str().unwrap()]);
    assert!(e.contains("broken.toml") && e.contains("line 3"), "{e}");
}

#[test]
fn unknown_key_names_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let c = write(d.path(), "typo.toml", "[task]\nkind = \"nb201\"\n[strategy]\nkind = \"evolution\"\npopulaton = 20\n");
    let e = stderr_of(&["run", c.to_str().unwrap(), "--study", d.path().join("s.db").to_str().unwrap()]);
    assert!(e.contains("typo.toml") && e.contains("populaton") && e.contains("line 5"), "{e}");
    let c = write(d.path(), "typo2.toml", "[study]\ntrails = 5\n[task]\nkind = \"nb201\"\n[strategy]\nkind = \"random\"\n");
    let e = stderr_of(&["run", c.to_str().unwrap()]);
    assert!(e.contains("typo2.toml") && e.contains("trails"), "{e}");
    let c = write(d.path(), "kind.toml", "[task]\nkind = \"nb201\"\n[strategy]\nkind = \"hillclimb\"\n");
    let e = stderr_of(&["run", c.to_str().unwrap()]);
    assert!(e.contains("kind.toml") && e.contains("hillclimb"), "{e}");
}

#[test]
fn out_of_range_values_name_file_and_field() {
    let d = tempfile::tempdir().unwrap();
    let c = write(d.path(), "pop.toml", "[task]\nkind = \"nb201\"\n[strategy]\nkind = \"evolution\"\npopulation = 0\n");
    let e = stderr_of(&["run", c.to_str().unwrap()]);
    assert!(e.contains("pop.toml") && e.contains("[strategy]") && e.contains("population"), "{e}");
    let c = write(d.path(), "lr.toml", "[task]\nkind = \"nb201\"\n[strategy]\nkind = \"ppo\"\nclip = -1.0\n");
    let e = stderr_of(&["run", c.to_str().unwrap()]);
    assert!(e.contains("lr.toml") && e.contains("clip"), "{e}");
    let c = write(d.path(), "budget.toml", "[study]\ntrials = 0\n[task]\nkind = \"nb201\"\n[strategy]\nkind = \"random\"\n");
    let e = stderr_of(&["run", c.to_str().unwrap()]);
    assert!(e.contains("budget.toml") && e.contains("trials"), "{e}");
    // An option out of range in a space file.
    let space = write(d.path(), "space.toml", "kind = \"sequence\"\nlength = 3\nnum_options = 0\n");
    let table = write(d.path(), "t.csv", "arch,a\n000,1\n");
    let e = bench_table_error(&table, &space, "a");
    assert!(e.contains("space.toml") && e.contains("no options"), "{e}");
}

#[test]
fn csv_that_does_not_match_its_space_names_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let space = write(d.path(), "space.toml", "kind = \"sequence\"\nlength = 3\noptions = [\"a\", \"b\"]\n");
    let table = write(d.path(), "t.csv", "arch,acc\n000,1\n010,2\n030,3\n");
    let e = bench_table_error(&table, &space, "acc");
    assert!(e.contains("t.csv") && e.contains("line 4"), "{e}");
    let missing = d.path().join("missing.csv");
    let e = bench_table_error(&missing, &space, "acc");
    assert!(e.contains("missing.csv"), "{e}");
}

#[test]
fn table_bench_prints_json_per_strategy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/table");
    let out = run_ok(&[
        "bench",
        "--task",
        "table",
        "--table",
        root.join("table.csv").to_str().unwrap(),
        "--space",
        root.join("space.toml").to_str().unwrap(),
        "--strategies",
        "random,evolution,reinforce,reinforce-lstm,ppo,ppo-lstm",
        "--budget",
        "20",
        "--seeds",
        "8",
        "--search-column",
        "proxy_acc",
        "--report-column",
        "final_acc",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    // The same search, one study per seed (a study and a replay with the same
    // seed ask for the same architectures), scored from the CSV itself.
    let table = read_table(&root.join("table.csv"));
    let d = tempfile::tempdir().unwrap();
    for (l, name) in lines.iter().zip(["random", "evolution", "reinforce", "reinforce-lstm", "ppo", "ppo-lstm"]) {
        assert_eq!(l["strategy"], name);
        assert_eq!((l["budget"].as_u64(), l["seeds"].as_u64()), (Some(20), Some(8)));
        let csv = root.join("table.csv");
        let reports: Vec<f64> = std::thread::scope(|s| {
            let (dir, csv, table) = (d.path(), &csv, &table);
            let runs: Vec<_> = (0..8).map(|seed| s.spawn(move || picked_report(dir, csv, table, name, seed))).collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let mean = reports.iter().sum::<f64>() / 8.0;
        let std = (reports.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / 8.0).sqrt();
        let (got_mean, got_std) = (l["mean"].as_f64().unwrap(), l["std"].as_f64().unwrap());
        assert!((got_mean - mean).abs() < 1e-9, "{name}: bench mean {got_mean}, recomputed {mean} from {reports:?}");
        assert!((got_std - std).abs() < 1e-9, "{name}: bench std {got_std}, recomputed {std} from {reports:?}");
        assert!(std > 0.0, "{name}: every seed picked an architecture of the same final accuracy: {reports:?}");
    }
}

/// `arch (option indices) → (proxy_acc, final_acc)` of the example table.
fn read_table(path: &Path) -> std::collections::HashMap<String, (f64, f64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("arch,proxy_acc,final_acc"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), (f[1].parse().unwrap(), f[2].parse().unwrap()))
        })
        .collect()
}

/// Runs a 20-trial study of `strategy` with `seed` on the example table and
/// returns the `final_acc` (from the CSV) of the trial with the best
/// `proxy_acc` (the first of equals), as the bench scores a run.
fn picked_report(dir: &Path, csv: &Path, table: &std::collections::HashMap<String, (f64, f64)>, strategy: &str, seed: u64) -> f64 {
    let options = ["conv3", "conv5", "sep3"];
    let space = "kind = \"custom\"\ndecisions = [\n  { name = \"stem\", options = OPTS },\n  { name = \"block1\", options = OPTS },\n  { name = \"block2\", options = OPTS },\n  { name = \"head\", options = OPTS },\n]\n"
        .replace("OPTS", &format!("{options:?}"));
    let cfg = format!(
        "[study]\nseed = {seed}\ntrials = 20\nworkers = 1\n[space]\n{space}[task]\nkind = \"table\"\nfile = {:?}\nsearch_column = \"proxy_acc\"\nreport_column = \"final_acc\"\n[strategy]\nkind = \"{strategy}\"\n",
        csv.to_str().unwrap()
    );
    let name = format!("{strategy}-{seed}");
    let c = write(dir, &format!("{name}.toml"), &cfg);
    let db = dir.join(format!("{name}.db"));
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let rows = trials(&db);
    assert_eq!(rows.len(), 20);
    let mut best: Option<(f64, f64)> = None;
    for (_, state, arch, value) in rows {
        assert_eq!(state, "COMPLETE");
        let key: String = arch.split(',').map(|o| options.iter().position(|x| *x == o).unwrap().to_string()).collect();
        let (proxy, report) = table[&key];
        assert_eq!(value, Some(proxy), "{arch}: the study's value is not the table's proxy_acc");
        if best.is_none_or(|(v, _)| proxy > v) {
            best = Some((proxy, report));
        }
    }
    best.unwrap().1
}

#[test]
fn same_config_and_seed_give_the_same_trials() {
    let d = tempfile::tempdir().unwrap();
    for strategy in ["evolution", "reinforce-lstm", "ppo"] {
        let c = nb201_config(d.path(), strategy, strategy, 40);
        let (a, b) = (d.path().join(format!("{strategy}-a.db")), d.path().join(format!("{strategy}-b.db")));
        run_ok(&["run", c.to_str().unwrap(), "--study", a.to_str().unwrap(), "--quiet"]);
        run_ok(&["run", c.to_str().unwrap(), "--study", b.to_str().unwrap(), "--quiet"]);
        let (ta, tb) = (trials(&a), trials(&b));
        assert_eq!(ta.len(), 40);
        assert_eq!(ta, tb, "{strategy}");
        let v = show_json(&a);
        assert_eq!(v["study"]["seed"], 3);
        assert!(v["study"]["config"].as_str().unwrap().contains("learning_rate") || strategy == "evolution");
    }
}

/// Kills a running study with SIGKILL at several moments and resumes it each
/// time: no completed trial is lost or changed, the budget is reached exactly,
/// and the trials are those of an uninterrupted run with the same seed.
#[test]
fn sigkill_and_resume_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    for (strategy, budget) in [("evolution", 6000u64), ("reinforce-lstm", 1500)] {
        let c = nb201_config(d.path(), strategy, strategy, budget);
        let db = d.path().join(format!("{strategy}-killed.db"));
        let mut kills = 0;
        let mut before: Vec<(u64, String, String, Option<f64>)> = Vec::new();
        for delay_ms in [150u64, 400, 700, 1000] {
            let mut child = bin()
                .args(["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            let finished = child.try_wait().unwrap().is_some();
            if !finished {
                // SAFETY: plain kill(2) of our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                kills += 1;
            }
            let _ = child.wait();
            if db.exists() {
                let now = trials(&db);
                // Everything finished before the kill is still there, unchanged.
                for t in before.iter().filter(|t| t.1 != "RUNNING") {
                    assert_eq!(now.get(t.0 as usize), Some(t), "{strategy}: trial {} changed", t.0);
                }
                before = now;
            }
        }
        assert!(kills >= 1, "{strategy}: the study finished before any kill; raise its budget");
        run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
        let resumed = trials(&db);
        assert_eq!(resumed.len() as u64, budget, "{strategy}");
        assert!(resumed.iter().all(|t| t.1 == "COMPLETE"), "{strategy}");
        assert!(resumed.iter().enumerate().all(|(i, t)| t.0 == i as u64));
        let clean = d.path().join(format!("{strategy}-clean.db"));
        run_ok(&["run", c.to_str().unwrap(), "--study", clean.to_str().unwrap(), "--quiet"]);
        assert_eq!(resumed, trials(&clean), "{strategy}: a resumed study must equal an uninterrupted one");
    }
}

/// Two processes run one study at once: no trial is lost or duplicated, and
/// both ran trials (each trial's `owner` names the process that ran it).
#[test]
fn two_processes_share_a_study() {
    let d = tempfile::tempdir().unwrap();
    // Enough trials (a few seconds) that the second process starts before
    // the first has finished them all, however loaded the machine.
    let n = 12_000;
    let c = nb201_config(d.path(), "shared", "evolution", n);
    let db = d.path().join("shared.db");
    let spawn = || {
        bin()
            .args(["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    let pids = [a.id(), b.id()];
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let t = trials(&db);
    assert_eq!(t.len(), n as usize);
    assert!(t.iter().enumerate().all(|(i, t)| t.0 == i as u64 && t.1 == "COMPLETE"));
    let v = show_json(&db);
    assert_eq!(v["complete"], n);
    // Owners are `machine:PID@start:token`: count the trials each process ran.
    let mut ran = std::collections::BTreeMap::<u32, usize>::new();
    for t in v["trials"].as_array().unwrap() {
        let owner = t["owner"].as_str().unwrap();
        let pid = owner.split_once('@').and_then(|(head, _)| head.rsplit_once(':')).and_then(|(_, pid)| pid.parse().ok());
        *ran.entry(pid.unwrap_or_else(|| panic!("owner `{owner}` names no process id"))).or_default() += 1;
    }
    let mut pids = pids.to_vec();
    pids.sort();
    assert_eq!(ran.keys().copied().collect::<Vec<_>>(), pids, "{ran:?}");
    assert!(ran.values().all(|&n| n >= 10), "each process must have run a share of the trials: {ran:?}");
}

#[test]
fn show_lists_trials_and_best() {
    let d = tempfile::tempdir().unwrap();
    let c = nb201_config(d.path(), "show", "random", 12);
    let db = d.path().join("show.db");
    let text = run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    assert!(text.contains("12 trials (12 complete, 0 failed") && text.contains("best: trial"), "{text}");
    let v = show_json(&db);
    let best = v["best"]["value"].as_f64().unwrap();
    let max = v["trials"].as_array().unwrap().iter().map(|t| t["value"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(best, max);
    assert!(v["best"]["metrics"]["c10_test200"].as_f64().is_some());
    let e = stderr_of(&["show", d.path().join("nope.db").to_str().unwrap()]);
    assert!(e.contains("nope.db"), "{e}");
}

#[test]
fn trials_not_in_the_table_fail_with_their_reason_and_the_study_goes_on() {
    let d = tempfile::tempdir().unwrap();
    // A table that lacks most architectures of its space.
    let table = write(d.path(), "sparse.csv", "arch,acc\n00,1\n01,2\n");
    let cfg = "[study]\ntrials = 20\n[space]\nkind = \"sequence\"\nlength = 2\nnum_options = 3\n[task]\nkind = \"table\"\nfile = \"sparse.csv\"\nsearch_column = \"acc\"\nreport_column = \"acc\"\n[strategy]\nkind = \"random\"\n";
    let _ = table;
    let c = write(d.path(), "sparse.toml", cfg);
    let db = d.path().join("sparse.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let v = show_json(&db);
    let all = v["trials"].as_array().unwrap();
    assert_eq!(all.len(), 20);
    let failed: Vec<&serde_json::Value> = all.iter().filter(|t| t["state"] == "FAIL").collect();
    assert!(!failed.is_empty() && v["complete"].as_u64().unwrap() > 0);
    assert_eq!(failed.len() + v["complete"].as_u64().unwrap() as usize, 20);
    // Exactly the two architectures of the table complete, with its values;
    // every other one fails with the reason.
    for t in all {
        match (t["arch"].as_str().unwrap(), t["state"].as_str().unwrap()) {
            ("op0,op0", "COMPLETE") => assert_eq!(t["value"], 1.0),
            ("op0,op1", "COMPLETE") => assert_eq!(t["value"], 2.0),
            (arch, "FAIL") => {
                assert!(arch != "op0,op0" && arch != "op0,op1", "{t}");
                let e = t["error"].as_str().unwrap();
                assert!(e.contains("not in the table") && e.contains(arch), "{t}");
            }
            _ => panic!("{t}"),
        }
    }
}

#[test]
fn bench_estimators_prints_one_json_object_per_estimator() {
    let out = run_ok(&["bench-estimators", "--samples", "100", "--decisions", "2", "--options", "3", "--json"]);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 12);
    for r in &rows {
        for key in ["estimator", "temperature", "bias", "variance", "noise", "samples"] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
        assert_eq!(r["samples"], 100);
        assert!(r["bias"].as_f64().unwrap().is_finite() && r["variance"].as_f64().unwrap() >= 0.0, "{r}");
    }
    let names: Vec<&str> = rows.iter().map(|r| r["estimator"].as_str().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| **n == "gumbel-soft").count(), 5);
    assert!(names.contains(&"reinforce") && names.contains(&"relax") && names.contains(&"gumbel-st"));
    let e = stderr_of(&["bench-estimators", "--decisions", "10", "--options", "10"]);
    assert!(e.contains("options^decisions"), "{e}");
}
