//! End-to-end tests of the multi-fidelity strategies on NAS-Bench-201 (its
//! 12- and 200-epoch columns as the fidelity axis, cost ∝ epochs): trials
//! pause, resume as the same trial, and are pruned at the step they reached;
//! ASHA with a worker pool; resume after SIGKILL; the bench at equal cost.

mod common;
use common::{bin, run_ok, stderr_of};

use std::path::{Path, PathBuf};
use std::time::Duration;

const ETA: f64 = 200.0 / 12.0;

fn config(dir: &Path, name: &str, cost: u64, workers: usize, strategy: &str) -> PathBuf {
    let text = format!(
        "[study]\nseed = 11\ncost = {cost}\ntrials = 1000000\nworkers = {workers}\n\
         [task]\nkind = \"nb201\"\nsearch_column = \"c10valid_valid200\"\ncost_per_step = 1.0\n\
         [strategy]\n{strategy}\n"
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn hyperband() -> String {
    format!("kind = \"hyperband\"\nmin_budget = 12\nmax_budget = 200\neta = {ETA}\n")
}

/// `show --json` of a one-study store; a store killed before its study was
/// created (or before its first write: an empty file, which `show` refuses)
/// shows no trials.
fn show(db: &Path) -> serde_json::Value {
    if std::fs::metadata(db).is_ok_and(|m| m.len() == 0) {
        return serde_json::json!({ "trials": [] });
    }
    let out = run_ok(&["show", db.to_str().unwrap(), "--json"]);
    if out.trim().is_empty() {
        return serde_json::json!({ "trials": [] });
    }
    serde_json::from_str(&out).unwrap()
}

/// `(number, state, step, value, intermediate steps)` of every trial.
type Row = (u64, String, Option<u64>, Option<f64>, Vec<u64>);

fn rows(db: &Path) -> Vec<Row> {
    show(db)["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let steps = t["intermediate"].as_array().unwrap().iter().map(|p| p[0].as_u64().unwrap()).collect();
            (t["number"].as_u64().unwrap(), t["state"].as_str().unwrap().into(), t["step"].as_u64(), t["value"].as_f64(), steps)
        })
        .collect()
}

/// Checks what every multi-fidelity study on NB201 must show: nothing left
/// running or paused, pruned trials stopped at 12 epochs with their 12-epoch
/// value, complete ones reached 200, and promoted ones went through both.
fn check_final(rows: &[Row]) -> (usize, usize, usize) {
    let (mut pruned, mut complete, mut promoted) = (0, 0, 0);
    for (n, state, step, value, steps) in rows {
        match state.as_str() {
            "PRUNED" => {
                assert_eq!((*step, steps.as_slice()), (Some(12), &[12][..]), "trial {n}");
                assert!(value.is_some(), "a pruned trial keeps the value of its step");
                pruned += 1;
            }
            "COMPLETE" => {
                assert_eq!(*step, Some(200), "trial {n}");
                assert_eq!(steps.last(), Some(&200));
                if steps.len() == 2 {
                    promoted += 1;
                }
                complete += 1;
            }
            other => panic!("trial {n} left {other}"),
        }
    }
    (pruned, complete, promoted)
}

#[test]
fn hyperband_pauses_resumes_and_prunes_at_the_step() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "hb", 3000, 1, &hyperband());
    let db = d.path().join("hb.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let r = rows(&db);
    let (pruned, complete, promoted) = check_final(&r);
    // Brackets of 17 at 12 epochs (one promoted) and of 2 at 200 epochs,
    // alternating: 404 + 400 per cycle; 3000 is spent during the 4th cycle.
    assert_eq!(&r[..19].iter().map(|t| t.1.as_str()).filter(|s| *s == "PRUNED").count(), &16);
    // One worker, so exactly: four brackets of 17 at 12 epochs (16 pruned,
    // one promoted, each) and seven architectures started at 200 (three
    // brackets of 2, then one of the fourth's): 68·12 + 11·200 = 3016.
    assert_eq!((pruned, complete, promoted), (64, 11, 4));
    let v = show(&db);
    let cost = v["study"]["counts"]["cost"].as_f64().unwrap();
    assert_eq!(cost, 68.0 * 12.0 + 11.0 * 200.0);
    // The value of a promoted trial is its 200-epoch one, and its 12-epoch
    // value is kept among its intermediate values.
    let t = v["trials"].as_array().unwrap().iter().find(|t| t["intermediate"].as_array().unwrap().len() == 2).unwrap();
    assert_eq!(t["value"], t["intermediate"][1][1]);
    assert_eq!(t["metrics"]["c10valid_valid200"], t["value"]);
    // Same config and seed: the same trials.
    let again = d.path().join("hb-again.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", again.to_str().unwrap(), "--quiet"]);
    assert_eq!(r, rows(&again));
    // `show` says where pruned trials stopped.
    let text = run_ok(&["show", db.to_str().unwrap()]);
    assert!(text.contains("PRUNED") && text.contains("@12"), "{text}");
}

#[test]
fn asha_runs_a_worker_pool_without_waiting() {
    let d = tempfile::tempdir().unwrap();
    let asha = format!("kind = \"asha\"\nmin_budget = 12\nmax_budget = 200\neta = {ETA}\n");
    let c = config(d.path(), "asha", 6000, 2, &asha);
    let db = d.path().join("asha.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let r = rows(&db);
    let (pruned, complete, promoted) = check_final(&r);
    assert!(promoted >= 5 && complete == promoted && pruned >= 16 * promoted - 16, "{pruned} {complete} {promoted}");
    assert!(r.iter().enumerate().all(|(i, t)| t.0 == i as u64));
    // Every trial is charged 12 for its first rung, and a promoted one 200
    // more (a table cannot resume); the last ones may overshoot the budget
    // by less than one 200-epoch evaluation per worker (2 here).
    let cost = show(&db)["study"]["counts"]["cost"].as_f64().unwrap();
    assert_eq!(cost, ((pruned + promoted) * 12 + complete * 200) as f64);
    assert!((6000.0..6400.0).contains(&cost), "cost {cost}");
}

#[test]
fn successive_halving_with_two_workers_waits_for_its_rungs() {
    let d = tempfile::tempdir().unwrap();
    let sh = "kind = \"successive-halving\"\nmin_budget = 12\nmax_budget = 200\neta = 4\nn = 8\n";
    // The ladder hangs from 200: 13, 50, 200; the table has no 13 or 50.
    let c = config(d.path(), "sh", 2000, 2, sh);
    let db = d.path().join("sh.db");
    let e = stderr_of(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    assert!(e.contains("is not a fidelity") && e.contains("successive-halving"), "{e}");
    // A `trials` budget smaller than one bracket is refused: no architecture
    // would reach the largest budget.
    let small = config(d.path(), "small", 2000, 1, &hyperband());
    let text = std::fs::read_to_string(&small).unwrap().replace("trials = 1000000", "trials = 10");
    std::fs::write(&small, text).unwrap();
    let e = stderr_of(&["run", small.to_str().unwrap(), "--study", d.path().join("small.db").to_str().unwrap()]);
    assert!(e.contains("small.toml") && e.contains("trials = 10") && e.contains("17 architectures"), "{e}");
    let sh = sh.replace("eta = 4", &format!("eta = {ETA}")).replace("n = 8", "n = 20");
    let c = config(d.path(), "sh2", 2000, 2, &sh);
    let db = d.path().join("sh2.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let (pruned, complete, promoted) = check_final(&rows(&db));
    // ⌊20/η⌋ = 1 promoted per bracket of 20: 440 per bracket. Four brackets
    // finish (1760); the fifth spends the rest (240) on its bottom rung, so
    // all its trials are pruned at the end.
    assert_eq!((complete, promoted), (4, 4));
    assert_eq!(pruned, 4 * 19 + 20);
}

/// SIGKILL during a Hyperband study, at several moments, then resume: what
/// was finished stays, and the result is the uninterrupted study's.
#[test]
fn sigkill_during_hyperband_and_resume_gives_the_uninterrupted_study() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "hb-kill", 300_000, 1, &hyperband());
    let db = d.path().join("killed.db");
    let mut kills = 0;
    let mut before: Vec<Row> = Vec::new();
    for delay_ms in [0u64, 100, 250] {
        let mut child = bin()
            .args(["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill once this run has recorded trials of its own (however slowly a
        // loaded machine starts it), `delay_ms` later.
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none()
            && !(db.exists() && rows(&db).len() > before.len())
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            kills += 1;
        }
        let _ = child.wait();
        if db.exists() {
            let now = rows(&db);
            for t in before.iter().filter(|t| t.1 == "COMPLETE" || t.1 == "PRUNED") {
                assert_eq!(now.get(t.0 as usize), Some(t), "trial {} changed", t.0);
            }
            before = now;
        }
    }
    assert!(kills >= 1, "the study finished before any kill; raise its budget");
    assert!(!before.is_empty(), "no trial was recorded before the kills");
    run_ok(&["run", c.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let clean = d.path().join("clean.db");
    run_ok(&["run", c.to_str().unwrap(), "--study", clean.to_str().unwrap(), "--quiet"]);
    let resumed = rows(&db);
    check_final(&resumed);
    assert_eq!(resumed, rows(&clean));
}

#[test]
fn bench_compares_multi_fidelity_and_full_fidelity_at_equal_cost() {
    let out = run_ok(&[
        "bench",
        "--strategies",
        "random,evolution,successive-halving,hyperband,asha",
        "--cost",
        "4000",
        "--seeds",
        "20",
        "--search-column",
        "c10valid_valid200",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    let field = |l: &serde_json::Value, k: &str| l[k].as_f64().unwrap_or_else(|| panic!("{k} in {l}"));
    for (l, name) in lines.iter().zip(["random", "evolution", "successive-halving", "hyperband", "asha"]) {
        assert_eq!(l["strategy"], name);
        let cost = field(l, "cost");
        assert!((4000.0..4200.0).contains(&cost), "{l}");
        // The picked architectures' 200-epoch CIFAR-10 test accuracy: well
        // above the table's mean (87.06) and median (90.73), and at most its
        // optimum (94.37).
        let mean = field(l, "mean");
        assert!((93.0..=94.37).contains(&mean), "{l}");
        assert!(field(l, "std") > 0.0, "{l}");
        assert!(field(l, "distinct") <= field(l, "evaluations"), "{l}");
    }
    // Full-fidelity strategies make 20 evaluations of 200 epochs, 200 each.
    for l in &lines[..2] {
        assert_eq!((field(l, "evaluations"), field(l, "cost")), (20.0, 4000.0), "{l}");
    }
    assert_eq!(field(&lines[0], "distinct"), 20.0);
    // The multi-fidelity ones see many more architectures for the same cost
    // (more than four times as many) and pick better ones on average.
    // Hyperband, exactly: five cycles of a bracket of 17 at 12 epochs (one
    // promoted to 200) and one of 2 at 200 epochs: 100 evaluations, 4020.
    assert_eq!((field(&lines[3], "evaluations"), field(&lines[3], "cost")), (100.0, 4020.0), "{}", lines[3]);
    for l in &lines[2..] {
        assert!(field(l, "distinct") > 4.0 * field(&lines[0], "distinct"), "{l}");
        assert!(field(l, "mean") > field(&lines[0], "mean"), "{l} vs {}", lines[0]);
    }
    // A ladder the table cannot serve is refused up front.
    let e = stderr_of(&["bench", "--strategies", "hyperband", "--cost", "4000", "--eta", "3"]);
    assert!(e.contains("hyperband") && e.contains("is not a fidelity"), "{e}");
}
