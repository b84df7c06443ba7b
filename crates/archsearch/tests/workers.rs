//! Many workers on one PostgreSQL study (a real server: run through
//! `scripts/test.sh` or `scripts/with-postgres.sh`, which start one and set
//! `ARCHSEARCH_PG_URL`): workers killed at random lose and duplicate
//! nothing, and a trial resumes on another worker from the checkpoint the
//! first one shared.

mod common;
use common::{bin, run_ok};

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use archsearch_core::TrialState;
use rand::{Rng, SeedableRng};

/// A fresh database on the test server.
fn fresh_store() -> String {
    let server = std::env::var("ARCHSEARCH_PG_URL").expect(
        "ARCHSEARCH_PG_URL is not set: these tests need a PostgreSQL server; run them through scripts/test.sh or scripts/with-postgres.sh",
    );
    archsearch_store::postgres::fresh_database(&server).unwrap()
}

fn spawn_worker(config: &Path, url: &str, cwd: &Path, extra: &[&str]) -> Child {
    worker(config, url, cwd).args(extra).spawn().unwrap()
}

fn worker(config: &Path, url: &str, cwd: &Path) -> std::process::Command {
    let mut c = bin();
    c.args(["worker", config.to_str().unwrap(), "--study", url, "--quiet"]).current_dir(cwd).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn sigkill(child: &mut Child) {
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
}

/// The issue's kill test: 4 workers on one study of 10,000 tabular trials,
/// a random worker SIGKILLed and restarted 20 times while they run. Every
/// trial number from 0 to 9,999 exists once and is COMPLETE, the study
/// started exactly 10,000 and no trial more, every ask and tell was
/// recorded in the strategy state, and each kill cost at most the one
/// trial its worker was running (re-run, counted as a crash).
#[test]
fn four_workers_killed_twenty_times_lose_and_duplicate_nothing() {
    let url = fresh_store();
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("kill.toml");
    let trials = 10_000u64;
    std::fs::write(
        &config,
        format!(
            "[study]\nname = \"kill\"\nseed = 3\ntrials = {trials}\n\n[task]\nkind = \"nb201\"\nsearch_column = \"c10valid_valid12\"\n\n\
             [strategy]\nkind = \"evolution\"\npopulation = 20\nsample = 5\n"
        ),
    )
    .unwrap();
    let mut workers: Vec<Child> = (0..4).map(|_| spawn_worker(&config, &url, d.path(), &[])).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let start = Instant::now();
    let mut kills = 0;
    while kills < 20 {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1200)));
        let i = rng.random_range(0..workers.len());
        if workers[i].try_wait().unwrap().is_some() {
            let (status, err) = workers[i].wait_with_output_ref();
            assert!(status.success(), "worker {i} failed after {kills} kills: {err}");
            break; // the study is over before all kills: the assertion below says so
        }
        sigkill(&mut workers[i]);
        kills += 1;
        workers[i] = spawn_worker(&config, &url, d.path(), &[]);
    }
    assert_eq!(kills, 20, "the study ended after {kills} kills ({:.0} s): too few trials to kill 20 times", start.elapsed().as_secs_f64());
    for w in &mut workers {
        let out = w.wait_with_output_ref();
        assert!(out.0.success(), "a worker failed: {}", out.1);
    }
    let store = archsearch_store::open_read_only(&url).unwrap();
    let rec = store.study("kill").unwrap();
    let t = store.trials(rec.id).unwrap();
    let numbers: Vec<u64> = t.iter().map(|t| t.number).collect();
    assert_eq!(numbers, (0..trials).collect::<Vec<_>>(), "every trial number once, none lost");
    assert!(t.iter().all(|t| t.state == TrialState::Complete), "every trial COMPLETE");
    assert_eq!((rec.counts.started, rec.counts.finished), (trials, trials), "the budget reached exactly");
    let (version, _) = store.strategy_state(rec.id, 0).unwrap();
    assert_eq!(version, 2 * trials, "one ask and one tell of each trial in the strategy state");
    let crashes: u32 = t.iter().map(|t| t.crashes).sum();
    assert!(crashes <= kills, "{crashes} crashed attempts for {kills} kills");
    let owners: std::collections::BTreeSet<&str> = t.iter().map(|t| t.owner.as_str()).collect();
    eprintln!(
        "kill test: {trials} trials, {kills} kills, {crashes} trials re-run after a kill, {} worker processes, {:.1} s",
        owners.len(),
        start.elapsed().as_secs_f64()
    );
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String) {
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        (self.wait().unwrap(), err)
    }
}

/// A tiny Fashion-MNIST study of fixed architectures trained `epochs` epochs.
fn train_config(dir: &Path, name: &str, strategy: &str, epochs: usize, study_extra: &str) -> PathBuf {
    let text = format!(
        r#"[study]
name = "{name}"
seed = 5
workers = 1
{study_extra}

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

[strategy]
{strategy}
"#
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Worker A (in its own folder) trains a trial and is SIGKILLed once its
/// first checkpoint is shared; worker B, in another folder with an empty
/// checkpoint cache, takes the orphan over and resumes it from A's shared
/// checkpoint (its metrics say from which epoch, and that another runner
/// wrote it), ending exactly where a straight run of it ends. Through a
/// shared folder, and through S3 (a real S3-compatible server).
#[test]
fn a_trial_resumes_on_another_worker_from_the_checkpoint_it_shared_in_a_folder() {
    let d = tempfile::tempdir().unwrap();
    let shared = d.path().join("shared");
    let artifacts = format!("file://{}", shared.display());
    handover(d.path(), &artifacts, &|key| shared.join(key).exists());
}

#[test]
fn a_trial_resumes_on_another_worker_from_the_checkpoint_it_shared_on_s3() {
    let bucket = std::env::var("ARCHSEARCH_S3_URL").expect(
        "ARCHSEARCH_S3_URL is not set: this test needs an S3-compatible server; run it through scripts/test.sh or scripts/with-s3.sh",
    );
    let d = tempfile::tempdir().unwrap();
    let artifacts = format!("{bucket}/handover-{:x}", rand::random::<u64>());
    let store = archsearch::artifacts::open(&artifacts).unwrap();
    let probe = d.path().join("probe");
    handover(d.path(), &artifacts, &|key| store.get(key, &probe).unwrap());
}

/// `shared(key)`: whether the artifact store holds `key` yet.
fn handover(dir: &Path, artifacts: &str, shared: &dyn Fn(&str) -> bool) {
    let url = fresh_store();
    let d = dir;
    let (a, b) = (d.join("a"), d.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let fixed = "kind = \"fixed\"\narchitectures = [\"conv3x3,sep3x3,conv3x3\"]";
    let config = train_config(d, "handover", fixed, 4, &format!("trials = 1\nartifacts = \"{artifacts}\""));
    let mut worker_a = spawn_worker(&config, &url, &a, &[]);
    let deadline = Instant::now() + Duration::from_secs(300);
    // Shared checkpoints are keyed by the study's uid (known once A made it).
    let uid = || archsearch_store::open_read_only(&url).ok().and_then(|s| s.study("handover").ok()).map(|r| r.uid);
    while !uid().is_some_and(|uid| shared(&format!("handover/{uid}/trial-0/checkpoint.safetensors"))) {
        assert!(Instant::now() < deadline, "worker A shared no checkpoint in 300 s");
        assert!(worker_a.try_wait().unwrap().is_none(), "worker A ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigkill(&mut worker_a);
    assert!(a.join(format!("archsearch-cache/handover/{}/trial-0", uid().unwrap())).exists(), "A's own cache");
    let out = bin().args(["worker", config.to_str().unwrap(), "--study", &url, "--quiet"]).current_dir(&b).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = archsearch_store::open_read_only(&url).unwrap();
    let t = store.trial(store.study("handover").unwrap().id, 0).unwrap();
    assert_eq!((t.state, t.attempts, t.crashes), (TrialState::Complete, 2, 1));
    assert!(t.metrics["resumed_from_epoch"] >= 1.0, "{:?}", t.metrics);
    assert_eq!(t.metrics["resumed_from_other_runner"], 1.0, "{:?}", t.metrics);
    assert_eq!(t.metrics["trained_by_runners"], 2.0, "{:?}", t.metrics);
    // The same trial trained straight through, on SQLite, ends the same.
    let straight = train_config(d, "handover", fixed, 4, "trials = 1");
    let db = d.join("straight.db");
    run_ok(&["worker", straight.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let s = archsearch_store::open_read_only(db.to_str().unwrap()).unwrap();
    let u = s.trial(s.study("handover").unwrap().id, 0).unwrap();
    assert_eq!(u.value, t.value, "the handed-over trial ends where a straight run ends");
    // Export from a third folder, whose cache is empty: the shared checkpoint is taken.
    let c = d.join("c");
    std::fs::create_dir_all(&c).unwrap();
    let out = bin().args(["export", &url, "-o", "out"]).current_dir(&c).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(c.join("out/model.safetensors").exists() && c.join("out/model.py").exists());
}

/// ASHA on Fashion-MNIST with two workers in different folders that share
/// only the PostgreSQL URL and a file:// artifact folder: every promoted
/// trial continues from a checkpoint (its own worker's, or the other's
/// through the shared folder), never from scratch.
#[test]
fn asha_across_two_workers_continues_every_promotion_from_a_checkpoint() {
    let url = fresh_store();
    let d = tempfile::tempdir().unwrap();
    let artifacts = format!("file://{}", d.path().join("shared").display());
    let asha = "kind = \"asha\"\nmin_budget = 1\nmax_budget = 3\neta = 3";
    let config = train_config(d.path(), "asha2", asha, 3, &format!("trials = 12\nartifacts = \"{artifacts}\""));
    let folders: Vec<PathBuf> = (0..2).map(|i| d.path().join(format!("w{i}"))).collect();
    let workers: Vec<Child> = folders
        .iter()
        .map(|f| {
            std::fs::create_dir_all(f).unwrap();
            spawn_worker(&config, &url, f, &[])
        })
        .collect();
    for mut w in workers {
        let (status, err) = w.wait_with_output_ref();
        assert!(status.success(), "{err}");
    }
    let store = archsearch_store::open_read_only(&url).unwrap();
    let t = store.trials(store.study("asha2").unwrap().id).unwrap();
    let promoted: Vec<_> = t.iter().filter(|t| t.step.unwrap_or(0) > 1 && t.intermediate.len() > 1).collect();
    assert!(!promoted.is_empty(), "no promotion in 12 trials");
    for p in &promoted {
        assert!(p.metrics["resumed_from_epoch"] >= 1.0, "trial {} trained again from scratch: {:?}", p.number, p.metrics);
    }
    let by_other = promoted.iter().filter(|p| p.metrics.get("resumed_from_other_runner") == Some(&1.0)).count();
    let by_both = promoted.iter().filter(|p| p.metrics.get("trained_by_runners") == Some(&2.0)).count();
    let owners: std::collections::BTreeSet<&str> = t.iter().map(|t| t.owner.as_str()).collect();
    assert_eq!(owners.len(), 2, "both workers took trials");
    eprintln!(
        "asha across 2 workers: {} trials, {} promoted; {by_both} trained by both workers, {by_other} continued from the other worker's checkpoint at their last promotion",
        t.len(),
        promoted.len()
    );
}

/// A tiny PBT-NAS population: 4 members, 3 steps of 1 epoch.
fn pbt_config(dir: &Path, study_extra: &str) -> PathBuf {
    let text = format!(
        r#"[study]
name = "pbt-workers"
seed = 2
workers = 2
{study_extra}

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
variant = "pbt-nas"
population = 4
interval = 1
epochs = 3
bottom = 0.5
top = 0.5
mix_probability = 0.5
"#
    );
    let p = dir.join(format!("pbt-{}.toml", rand::random::<u32>()));
    std::fs::write(&p, text).unwrap();
    p
}

/// Two workers of `config`, each in its own folder under `dir` (their
/// warnings kept).
fn two_workers(dir: &Path, config: &Path, url: &str) -> (Vec<PathBuf>, Vec<Child>) {
    let folders: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("w{i}"))).collect();
    let workers = folders
        .iter()
        .map(|f| {
            std::fs::create_dir_all(f).unwrap();
            worker(config, url, f).env("ARCHSEARCH_LOG", "warn").spawn().unwrap()
        })
        .collect();
    (folders, workers)
}

/// Every member's record at every step, as `(step, member, arch, fitness, parents, lineage)`.
fn population(store: &dyn archsearch_store::Storage) -> Vec<(u64, u64, String, String, String, String)> {
    let id = store.study("pbt-workers").unwrap().id;
    store
        .members(id)
        .unwrap()
        .iter()
        .map(|m| {
            let r = &m.record;
            (m.step, m.member, r["arch"].to_string(), r["fitness"].to_string(), r["parents"].to_string(), r["lineage"].to_string())
        })
        .collect()
}

/// PBT-NAS trained by two workers in different folders, sharing only the
/// PostgreSQL study and a file:// artifact folder, one of them SIGKILLed
/// once mid-run and started again: every member at every step is recorded
/// once, each member interval is a trial, and the population (architectures,
/// fitness, parents, lineage) equals what one process makes of the same
/// config and seed.
#[test]
fn a_pbt_population_trained_by_two_workers_equals_one_process() {
    let url = fresh_store();
    let d = tempfile::tempdir().unwrap();
    let artifacts = format!("file://{}", d.path().join("shared").display());
    let config = pbt_config(d.path(), &format!("artifacts = \"{artifacts}\""));
    let (folders, mut workers) = two_workers(d.path(), &config, &url);
    // Kill worker 0 once the first step is recorded, then start it again.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "no step recorded in 300 s");
        let done =
            archsearch_store::open_read_only(&url).ok().and_then(|s| s.study("pbt-workers").ok().map(|r| r.counts.finished)).unwrap_or(0);
        if done >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sigkill(&mut workers[0]);
    workers[0] = spawn_worker(&config, &url, &folders[0], &[]);
    for w in &mut workers {
        let (status, err) = w.wait_with_output_ref();
        assert!(status.success(), "{err}");
    }
    let store = archsearch_store::open_read_only(&url).unwrap();
    let shared = population(store.as_ref());
    assert_eq!(shared.len(), 4 * 3, "every member at every step, once");
    let t = store.trials(store.study("pbt-workers").unwrap().id).unwrap();
    assert_eq!(t.len(), 4 * 3, "one trial per member interval");
    assert!(t.iter().all(|t| t.state == TrialState::Complete));
    // One process, on SQLite, same config and seed.
    let single = pbt_config(d.path(), "");
    let db = d.path().join("single.db");
    run_ok(&["run", single.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let one = archsearch_store::open_read_only(db.to_str().unwrap()).unwrap();
    assert_eq!(shared, population(one.as_ref()), "two workers (one killed) make the population one process makes");
}

/// A PBT worker stopped (SIGSTOP: a hung machine) while it trains a member,
/// for longer than `stale_after`: the other worker takes the member over
/// and trains it from the shared checkpoint. Continued, the stopped worker
/// finds it lost the member, stops training it before it writes or shares
/// another checkpoint, tells nothing, and goes on with the population,
/// which ends exactly as one process makes it.
#[test]
fn a_stopped_pbt_worker_gives_its_member_up_and_the_population_is_unchanged() {
    let url = fresh_store();
    let d = tempfile::tempdir().unwrap();
    let artifacts = format!("file://{}", d.path().join("shared").display());
    let config = pbt_config(d.path(), &format!("stale_after = 2.0\nartifacts = \"{artifacts}\""));
    let (_, mut workers) = two_workers(d.path(), &config, &url);
    let pid = workers[0].id();
    let trials = || {
        let s = archsearch_store::open_read_only(&url).ok()?;
        s.trials(s.study("pbt-workers").ok()?.id).ok()
    };
    let signal = |sig| {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(pid as i32, sig) };
    };
    // Stopped while it owns a running member; a stop that lands inside a
    // transaction (the other worker then waits for it) is undone and tried
    // again.
    let mut taken_over = None;
    for _ in 0..5 {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mine = loop {
            assert!(Instant::now() < deadline, "worker 0 never trained a member");
            let running =
                trials().unwrap_or_default().into_iter().find(|t| t.state == TrialState::Running && t.owner.contains(&format!(":{pid}@")));
            if let Some(t) = running.filter(|t| t.number >= 2) {
                break t.number;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        signal(libc::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && taken_over.is_none() {
            let t = trials().unwrap_or_default().into_iter().find(|t| t.number == mine);
            if t.is_some_and(|t| t.state == TrialState::Complete && t.attempts == 2) {
                taken_over = Some(mine);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(libc::SIGCONT);
        if taken_over.is_some() {
            break;
        }
    }
    let mine = taken_over.expect("the stopped worker's member was never taken over");
    let mut said = Vec::new();
    for w in &mut workers {
        let (status, err) = w.wait_with_output_ref();
        assert!(status.success(), "{err}");
        said.push(err);
    }
    eprintln!("the stopped worker said: {}", said[0].trim());
    assert!(said[0].contains("taken over by another worker"), "{}", said[0]);
    let store = archsearch_store::open_read_only(&url).unwrap();
    let t = store.trials(store.study("pbt-workers").unwrap().id).unwrap();
    assert_eq!(t.len(), 4 * 3, "one trial per member interval");
    assert!(t.iter().all(|t| t.state == TrialState::Complete));
    let taken = t.iter().find(|t| t.number == mine).unwrap();
    assert!(!taken.owner.contains(&format!(":{pid}@")), "told by the worker that took it over");
    let shared = population(store.as_ref());
    let single = pbt_config(d.path(), "");
    let db = d.path().join("single.db");
    run_ok(&["run", single.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    let one = archsearch_store::open_read_only(db.to_str().unwrap()).unwrap();
    assert_eq!(shared, population(one.as_ref()), "a stopped and continued worker changes nothing");
}
