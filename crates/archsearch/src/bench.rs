//! Benchmarks that print their figures: strategy replays on tabular tasks,
//! and the per-trial cost of the store.

use std::time::Instant;

use anyhow::{anyhow, Result};
use archsearch_core::stats::{mean, std};
use archsearch_core::Outcome;
use archsearch_tasks::tabular::TableTask;
use rayon::prelude::*;
use serde::Serialize;

use crate::registry::StrategyConfig;

/// One strategy's result over all seeds.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    pub strategy: String,
    pub budget: u64,
    pub seeds: u64,
    /// Mean and std of the report column of the architecture each run picked.
    pub mean: f64,
    pub std: f64,
    /// Mean search-column value of the picked architectures.
    pub search_mean: f64,
    /// Mean number of distinct architectures a run evaluated.
    pub distinct: f64,
    pub wall_seconds: f64,
}

/// Replays `strategy` on `task` for seeds `0..seeds`, `budget` queries each,
/// seeds in parallel. Each run picks the architecture with the best search
/// value it saw (ties: the first) and is scored by its report value.
pub fn replay(task: &TableTask, strategy: &StrategyConfig, budget: u64, seeds: u64) -> Result<ReplayResult> {
    let start = Instant::now();
    let space = archsearch_tasks::Task::space(task);
    let runs: Vec<(f64, f64, usize)> = (0..seeds)
        .into_par_iter()
        .map(|seed| -> Result<(f64, f64, usize)> {
            archsearch_rl::init_thread(1);
            let mut s = strategy.build(space, seed)?;
            let mut best: Option<(f64, f64)> = None;
            let mut seen = std::collections::HashSet::new();
            for _ in 0..budget {
                let arch = s.ask()?;
                seen.insert(arch.choices.clone());
                let Some((search, report)) = task.search_and_report(&arch) else {
                    s.tell(&arch, Outcome::Failed)?;
                    continue;
                };
                if best.is_none_or(|(b, _)| search > b) {
                    best = Some((search, report));
                }
                s.tell(&arch, Outcome::Complete { value: search })?;
            }
            let (search, report) = best.ok_or_else(|| anyhow!("seed {seed}: no query found its architecture in the table"))?;
            Ok((report, search, seen.len()))
        })
        .collect::<Result<_>>()?;
    let reports: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let searches: Vec<f64> = runs.iter().map(|r| r.1).collect();
    let distinct: Vec<f64> = runs.iter().map(|r| r.2 as f64).collect();
    Ok(ReplayResult {
        strategy: strategy.name().to_string(),
        budget,
        seeds,
        mean: mean(&reports),
        std: std(&reports),
        search_mean: mean(&searches),
        distinct: mean(&distinct),
        wall_seconds: start.elapsed().as_secs_f64(),
    })
}
