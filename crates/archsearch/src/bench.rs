//! Benchmarks that print their figures: strategy replays on tabular tasks,
//! and the per-trial cost of the store.

use std::time::Instant;

use anyhow::{anyhow, Result};
use archsearch_core::stats::{mean, std};
use archsearch_core::{Job, Outcome};
use archsearch_tasks::tabular::TableTask;
use rayon::prelude::*;
use serde::Serialize;

use crate::registry::StrategyConfig;

/// One strategy's result over all seeds.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    pub strategy: String,
    /// Evaluations per run, if the budget was counted in evaluations.
    pub budget: Option<u64>,
    /// Simulated cost per run, if the budget was counted in cost.
    pub cost_budget: Option<f64>,
    pub seeds: u64,
    /// Mean and std of the report column of the architecture each run picked.
    pub mean: f64,
    pub std: f64,
    /// Mean search-column value of the picked architectures.
    pub search_mean: f64,
    /// Mean number of distinct architectures a run evaluated.
    pub distinct: f64,
    /// Mean number of evaluations (table queries) a run made.
    pub evaluations: f64,
    /// Mean simulated cost a run spent.
    pub cost: f64,
    pub wall_seconds: f64,
    /// Samples to quality: `[evaluations, mean, std]` over seeds of the
    /// report value of each run's pick after that many evaluations (at most
    /// about 60 points, spaced geometrically).
    pub curve: Vec<(u64, f64, f64)>,
}

/// A replay's budget per run: evaluations, simulated cost, or both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayBudget {
    pub evaluations: Option<u64>,
    pub cost: Option<f64>,
}

/// Replays `strategy` on `task` for seeds `0..seeds`, seeds in parallel,
/// until each run's budget is spent. Multi-fidelity strategies ask for
/// budgets of the table's fidelity axis (a promoted architecture is charged
/// its larger budget in full: a table cannot resume). Each run picks, among
/// the architectures evaluated at the largest budget it reached, the one with
/// the best value (ties: the first), and is scored by its report value.
pub fn replay(task: &TableTask, strategy: &StrategyConfig, budget: ReplayBudget, seeds: u64) -> Result<ReplayResult> {
    let start = Instant::now();
    let space = archsearch_tasks::Task::space(task);
    let runs: Vec<Run> = (0..seeds)
        .into_par_iter()
        .map(|seed| -> Result<Run> {
            archsearch_rl::init_thread(1);
            let mut s = strategy.build(space, seed)?;
            let mut run = Run::default();
            let mut started = 0u64;
            // Architectures by trial number (a resumed trial's is its own).
            let mut archs: Vec<archsearch_core::Architecture> = Vec::new();
            // (budget, search value, report value) of the pick so far.
            let mut best: Option<(u64, f64, f64)> = None;
            let mut seen = std::collections::HashSet::new();
            loop {
                if budget.cost.is_some_and(|c| run.cost >= c) || budget.evaluations.is_some_and(|n| run.evaluations >= n) {
                    break;
                }
                let (trial, arch, b) = match s.ask_job(started)? {
                    Job::Start { arch, budget } => {
                        started += 1;
                        archs.push(arch.clone());
                        (started - 1, arch, budget)
                    }
                    Job::Resume { trial, budget } => {
                        let arch =
                            archs.get(trial as usize).cloned().ok_or_else(|| anyhow!("seed {seed}: resume of unknown trial {trial}"))?;
                        (trial, arch, Some(budget))
                    }
                    Job::Wait => return Err(anyhow!("seed {seed}: `{}` waited in a sequential replay", s.name())),
                };
                run.evaluations += 1;
                seen.insert(arch.choices.clone());
                let outcome = match task.value_at(&arch, b)? {
                    Some((value, report, cost)) => {
                        run.cost += cost;
                        if value.is_finite() {
                            let level = b.unwrap_or(u64::MAX);
                            if best.is_none_or(|(l, v, _)| level > l || (level == l && value > v)) {
                                best = Some((level, value, report));
                            }
                            Outcome::Complete { value }
                        } else {
                            Outcome::Failed
                        }
                    }
                    None => Outcome::Failed,
                };
                s.tell_job(trial, &arch, b, outcome)?;
                run.picks.push(best.map_or(f64::NAN, |(_, _, r)| r));
            }
            let (_, search, report) = best.ok_or_else(|| anyhow!("seed {seed}: no query found its architecture in the table"))?;
            run.report = report;
            run.search = search;
            run.distinct = seen.len();
            Ok(run)
        })
        .collect::<Result<_>>()?;
    let col = |f: fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let reports = col(|r| r.report);
    Ok(ReplayResult {
        strategy: strategy.name().to_string(),
        budget: budget.evaluations,
        cost_budget: budget.cost,
        seeds,
        mean: mean(&reports),
        std: std(&reports),
        search_mean: mean(&col(|r| r.search)),
        distinct: mean(&col(|r| r.distinct as f64)),
        evaluations: mean(&col(|r| r.evaluations as f64)),
        cost: mean(&col(|r| r.cost)),
        wall_seconds: start.elapsed().as_secs_f64(),
        curve: curve(&runs),
    })
}

/// Mean and std over runs of the report value of each run's pick after `k`
/// evaluations, at geometrically spaced `k` (a run that stopped earlier
/// keeps its last pick).
fn curve(runs: &[Run]) -> Vec<(u64, f64, f64)> {
    let longest = runs.iter().map(|r| r.picks.len()).max().unwrap_or(0);
    let mut grid: Vec<usize> = (0..60).map(|i| (longest as f64).powf(i as f64 / 59.0).round() as usize).collect();
    grid.dedup();
    grid.into_iter()
        .filter(|&k| k >= 1 && k <= longest)
        .filter_map(|k| {
            let values: Vec<f64> =
                runs.iter().filter_map(|r| r.picks.get(k - 1).or(r.picks.last()).copied()).filter(|v| v.is_finite()).collect();
            (!values.is_empty()).then(|| (k as u64, mean(&values), std(&values)))
        })
        .collect()
}

#[derive(Default)]
struct Run {
    report: f64,
    search: f64,
    distinct: usize,
    evaluations: u64,
    cost: f64,
    /// The report value of the pick after each evaluation (NaN before any).
    picks: Vec<f64>,
}

/// `archsearch bench-train`: the reference networks trained by archsearch
/// and by PyTorch (`benches/pytorch_reference.py`) on Fashion-MNIST, same
/// batch, Adam and thread count; then the worker pool's total throughput
/// against PyTorch's best single-process setting.
pub fn train_speed(
    steps: usize,
    batch: i64,
    workers: usize,
    python: &std::path::Path,
    data_dir: Option<&std::path::Path>,
    device: tch::Device,
) -> Result<()> {
    use archsearch_core::Architecture;
    use archsearch_train::data::{Data, DatasetKind, RawDataset};
    use archsearch_train::nets::{IoShape, NetConfig, Scale};
    use archsearch_train::trainer::time_steps;

    let raw = RawDataset::load(DatasetKind::FashionMnist, data_dir)?;
    let data = Data::prepare(&raw, 1.0 / 6.0, 0, 1.0, None, device)?;
    let device_arg = if device.is_cuda() { "cuda" } else { "cpu" };
    let io = IoShape { channels: 1, resolution: 28, classes: 10 };
    let scale = Scale { width: 1.0, repeats: 1 };
    let space = archsearch_core::Space::sequence(1, 1);
    let arch = Architecture::new(vec![0]);
    let build = |net: &NetConfig, seed| net.build(&space, &arch, io, scale, device, seed);
    let nets = [("cnn", NetConfig::ReferenceCnn), ("mlp", NetConfig::ReferenceMlp)];
    let data_arg = data_dir.map(|d| d.display().to_string()).unwrap_or_else(|| archsearch_train::data::DEBIAN_FASHION_MNIST.into());
    let pytorch = |extra: &[&str]| -> Result<Vec<serde_json::Value>> {
        let out = std::process::Command::new(python)
            .arg("benches/pytorch_reference.py")
            .args(["--steps", &steps.to_string(), "--batch", &batch.to_string(), "--data", &data_arg, "--device", device_arg])
            .args(extra)
            .output()
            .map_err(|e| anyhow!("running {}: {e}", python.display()))?;
        if !out.status.success() {
            return Err(anyhow!("{} failed: {}", python.display(), String::from_utf8_lossy(&out.stderr)));
        }
        String::from_utf8_lossy(&out.stdout).lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
    };

    println!("reference networks, batch {batch}, Adam, Fashion-MNIST, {steps} timed steps, device {device_arg}");
    println!("{:<5} {:>8} {:>16} {:>14} {:>8}", "net", "threads", "archsearch ms", "pytorch ms", "ratio");
    let mut best_pytorch: std::collections::BTreeMap<&str, f64> = Default::default();
    let thread_counts: &[i32] = if device.is_cuda() { &[1] } else { &[1, 2] };
    for &threads in thread_counts {
        tch::set_num_threads(threads);
        let py = pytorch(&["--threads", &threads.to_string()])?;
        for ((name, net), p) in nets.iter().zip(&py) {
            let model = build(net, 0)?;
            let ours = time_steps(&model, &data, steps, batch, 0);
            let theirs = p["ms_per_step"].as_f64().unwrap_or(f64::NAN);
            let e = best_pytorch.entry(name).or_insert(0.0);
            *e = e.max(1000.0 / theirs);
            println!("{name:<5} {threads:>8} {ours:>16.2} {theirs:>14.2} {:>8.3}", ours / theirs);
        }
    }
    if device.is_cuda() {
        return Ok(());
    }
    println!("\nworker pool: {workers} concurrent trainings, 1 thread each (total steps/s)");
    for (name, net) in &nets {
        let per: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..workers)
                .map(|w| {
                    let data = &data;
                    let build = &build;
                    s.spawn(move || {
                        tch::set_num_threads(1);
                        let model = build(net, w as u64).expect("reference nets build");
                        1000.0 / time_steps(&model, data, steps, batch, w as u64)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("bench thread")).collect()
        });
        let total: f64 = per.iter().sum();
        let py_pool = pytorch(&["--threads", "1", "--procs", &workers.to_string(), "--nets", name])?;
        let py_pool = py_pool[0]["total_steps_per_second"].as_f64().unwrap_or(f64::NAN);
        let best_single = best_pytorch[name];
        println!(
            "{name:<5} archsearch pool {total:>8.1} steps/s | pytorch best single process {best_single:>8.1} steps/s | pytorch {workers} processes {py_pool:>8.1} steps/s | pool / best single {:.2}",
            total / best_single
        );
    }
    Ok(())
}
