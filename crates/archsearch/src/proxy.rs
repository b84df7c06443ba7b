//! Proxy checks: how well a cheap evaluation ranks architectures the way the
//! target evaluation does.
//!
//! For each proxy: Kendall τ-b, Spearman ρ, the overlap of the top-k sets,
//! the regret of picking the proxy's best (target metric of the true best
//! minus that of the proxy's pick), and the cost ratio proxy / target.
//!
//! On tabular tasks proxies and targets are columns (NAS-Bench-201's 12-epoch
//! columns against its 200-epoch ones, or across data sets). On training
//! tasks they are fidelities: every sampled architecture is trained at each
//! proxy fidelity and at the target, each fidelity a study of its own in the
//! store (`NAME.PROXY`), so an interrupted check resumes and reuses every
//! finished evaluation. The results are stored as the `proxy_check`
//! attribute of the study `NAME`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use archsearch_core::space::SpaceSpec;
use archsearch_core::stats::{kendall_tau_b, mean, spearman, top_k, top_k_overlap};
use archsearch_core::strategies::fixed;
use archsearch_core::{Rng, TrialState};
use archsearch_store::NewStudy;
use archsearch_tasks::tabular::{TableQuery, TableTask};
use archsearch_train::{DeviceChoice, Fidelity};
use rand::seq::index::sample;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::config::{read_toml, Config, StudySection, TaskConfig};
use crate::registry::StrategyConfig;
use crate::study::Study;

/// A proxy-check file: `[study]`, `[space]`, `[task]` as in a study config,
/// and `[check]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckFile {
    #[serde(default)]
    pub study: StudySection,
    #[serde(default)]
    pub space: Option<SpaceSpec>,
    pub task: TaskConfig,
    pub check: CheckConfig,
}

/// `[check]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// How many architectures (a seeded sample); 0 = every row of a table.
    #[serde(default)]
    pub architectures: usize,
    /// The top-k sets are the best `top_fraction` of the architectures.
    #[serde(default = "default_top")]
    pub top_fraction: f64,
    /// Tabular tasks: proxy and target columns.
    #[serde(default)]
    pub pairs: Vec<ColumnPair>,
    /// Training tasks: the proxy fidelities.
    #[serde(default)]
    pub proxies: Vec<NamedFidelity>,
    /// Training tasks: the target fidelity (default: `[task] target`).
    #[serde(default)]
    pub target: Option<Fidelity>,
}

fn default_top() -> f64 {
    0.1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnPair {
    pub name: String,
    pub proxy: String,
    pub target: String,
    /// Cost of one proxy query (e.g. its training epochs).
    pub proxy_cost: f64,
    /// Cost of one target query.
    pub target_cost: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedFidelity {
    pub name: String,
    pub fidelity: Fidelity,
}

/// What a proxy check measured for one proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyReport {
    pub proxy: String,
    pub target: String,
    pub architectures: usize,
    pub kendall_tau: f64,
    pub spearman_rho: f64,
    /// Fraction of the target's top k also in the proxy's top k.
    pub topk_overlap: f64,
    pub k: usize,
    /// Target metric of the true best minus that of the proxy's best.
    pub regret: f64,
    /// Cost of a proxy evaluation over that of a target evaluation.
    pub cost_ratio: f64,
}

/// Compares `proxy` to `target` values of the same architectures (pairs with
/// a NaN on either side are left out).
pub fn compare(name: &str, target_name: &str, proxy: &[f64], target: &[f64], top_fraction: f64, cost_ratio: f64) -> Result<ProxyReport> {
    let (p, t): (Vec<f64>, Vec<f64>) =
        proxy.iter().zip(target).filter(|(a, b)| a.is_finite() && b.is_finite()).map(|(a, b)| (*a, *b)).unzip();
    if p.len() < 2 {
        bail!("proxy `{name}`: fewer than two architectures have both values");
    }
    let k = ((p.len() as f64 * top_fraction).round() as usize).clamp(1, p.len());
    let best_target = t.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let pick = top_k(&p, 1)[0];
    Ok(ProxyReport {
        proxy: name.to_string(),
        target: target_name.to_string(),
        architectures: p.len(),
        kendall_tau: kendall_tau_b(&p, &t),
        spearman_rho: spearman(&p, &t),
        topk_overlap: top_k_overlap(&p, &t, k),
        k,
        regret: best_target - t[pick],
        cost_ratio,
    })
}

/// Runs the check of `path`; results go to the store at `url`.
pub fn run(path: &Path, url: &str, device: Option<DeviceChoice>, workers: Option<usize>) -> Result<Vec<ProxyReport>> {
    let mut file: CheckFile = read_toml(path)?;
    let name = file
        .study
        .name
        .clone()
        .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "proxy-check".into()));
    file.study.name = Some(name.clone());
    let c = &file.check;
    if !(c.top_fraction > 0.0 && c.top_fraction <= 1.0) {
        bail!("{}: [check] top_fraction = {} must be in (0, 1]", path.display(), c.top_fraction);
    }
    let (reports, pairs): (Vec<ProxyReport>, Vec<Pairs>) = match &file.task {
        TaskConfig::Nb201 { .. } | TaskConfig::Table { .. } => tabular(&file, path)?,
        TaskConfig::Train(_) => training(&file, path, url, device, workers)?,
    }
    .into_iter()
    .unzip();
    let mut store = archsearch_store::open(url)?;
    let new = NewStudy {
        name,
        config: toml::to_string(&file).context("serialising the check config")?,
        seed: file.study.seed,
        direction: file.study.direction,
    };
    let (record, _) = store.open_study(&new)?;
    store.set_attr(record.id, "proxy_check", &serde_json::to_string(&reports)?)?;
    // The (proxy, target) values behind each report, for its scatter plot.
    let pairs: serde_json::Map<String, serde_json::Value> =
        reports.iter().zip(pairs).map(|(r, p)| (r.proxy.clone(), serde_json::json!(p))).collect();
    store.set_attr(record.id, "proxy_pairs", &serde_json::to_string(&pairs)?)?;
    Ok(reports)
}

/// At most this many (proxy, target) pairs of a check are stored for its plot.
const STORED_PAIRS: usize = 2_000;

/// The finite (proxy, target) pairs of a check; an evenly spaced
/// [`STORED_PAIRS`] of them when there are more.
type Pairs = Vec<(f64, f64)>;

fn pairs(proxy: &[f64], target: &[f64]) -> Pairs {
    let all: Pairs = proxy.iter().zip(target).map(|(&p, &t)| (p, t)).filter(|(p, t)| p.is_finite() && t.is_finite()).collect();
    let stride = all.len().div_ceil(STORED_PAIRS).max(1);
    all.into_iter().step_by(stride).collect()
}

/// Compares one proxy and keeps its pairs.
fn check(name: &str, target_name: &str, proxy: &[f64], target: &[f64], top: f64, cost_ratio: f64) -> Result<(ProxyReport, Pairs)> {
    Ok((compare(name, target_name, proxy, target, top, cost_ratio)?, pairs(proxy, target)))
}

fn tabular(file: &CheckFile, path: &Path) -> Result<Vec<(ProxyReport, Pairs)>> {
    let c = &file.check;
    let Some(first) = c.pairs.first() else {
        bail!("{}: [check] needs `pairs` (proxy and target columns) for a table task", path.display())
    };
    let query = TableQuery::new(&first.proxy, &first.target);
    let table = match &file.task {
        TaskConfig::Nb201 { .. } => TableTask::nb201(query)?,
        TaskConfig::Table { file: csv, arch_column, .. } => {
            let space = file.space.as_ref().context("a table task needs a [space]")?.build()?;
            let csv = if csv.is_relative() { path.parent().unwrap_or(Path::new(".")).join(csv) } else { csv.clone() };
            TableTask::from_csv(&csv, space, arch_column, query)?
        }
        TaskConfig::Train(_) => unreachable!(),
    };
    let n = table.len();
    let rows: Vec<usize> = if c.architectures == 0 || c.architectures >= n {
        (0..n).collect()
    } else {
        let mut rng = Rng::seed_from_u64(file.study.seed);
        let mut v = sample(&mut rng, n, c.architectures).into_vec();
        v.sort_unstable();
        v
    };
    let column = |col: &str| -> Result<Vec<f64>> {
        let all = table.column_values(col).with_context(|| format!("{}: no column `{col}` in the table", path.display()))?;
        Ok(rows.iter().map(|&r| all[r]).collect())
    };
    c.pairs
        .iter()
        .map(|p| check(&p.name, &p.target, &column(&p.proxy)?, &column(&p.target)?, c.top_fraction, p.proxy_cost / p.target_cost))
        .collect()
}

fn training(
    file: &CheckFile,
    path: &Path,
    url: &str,
    device: Option<DeviceChoice>,
    workers: Option<usize>,
) -> Result<Vec<(ProxyReport, Pairs)>> {
    let TaskConfig::Train(task) = &file.task else { unreachable!() };
    let c = &file.check;
    if c.proxies.is_empty() {
        bail!("{}: [check] needs `proxies` (fidelities) for a training task", path.display());
    }
    let target = c
        .target
        .clone()
        .or_else(|| task.target.clone())
        .with_context(|| format!("{}: no target fidelity ([check] target or [task] target)", path.display()))?;
    if c.architectures < 2 {
        bail!("{}: [check] architectures must be >= 2 for a training task", path.display());
    }
    let space = file.space.as_ref().context("a training task needs a [space]")?.build()?;
    let mut rng = Rng::seed_from_u64(file.study.seed);
    let archs: Vec<String> = (0..c.architectures).map(|_| space.canonical(&space.sample(&mut rng))).collect();
    let name = file.study.name.clone().unwrap_or_default();
    // Each fidelity: a study that evaluates the architectures in order.
    let evaluate = |label: &str, fidelity: &Fidelity| -> Result<(Vec<f64>, f64)> {
        let mut t = task.clone();
        t.proxy = fidelity.clone();
        t.target = None;
        let config = Config {
            study: StudySection {
                name: Some(format!("{name}.{label}")),
                trials: Some(archs.len() as u64),
                cost: None,
                ..file.study.clone()
            },
            space: file.space.clone(),
            task: TaskConfig::Train(t),
            strategy: StrategyConfig::Fixed(fixed::Config { architectures: archs.clone() }),
        };
        let mut study = Study::open(&config, archsearch_store::open(url)?, device)?;
        let w = workers.or(file.study.workers).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let connect = || archsearch_store::open(url).map_err(anyhow::Error::from);
        study.run_parallel(w, &connect, &|ev| eprintln!("{label}: trial {} {:?} {:?}", ev.number, ev.state, ev.value))?;
        let trials = study.store().trials(study.record().id)?;
        let values = trials.iter().map(|t| if t.state == TrialState::Complete { t.value.unwrap_or(f64::NAN) } else { f64::NAN }).collect();
        let costs: Vec<f64> = trials.iter().filter_map(|t| t.metrics.get("train_seconds").copied()).collect();
        Ok((values, mean(&costs)))
    };
    let (target_values, target_cost) = evaluate("target", &target)?;
    c.proxies
        .iter()
        .map(|p| {
            let (values, cost) = evaluate(&p.name, &p.fidelity)?;
            check(&p.name, "target", &values, &target_values, c.top_fraction, cost / target_cost)
        })
        .collect()
}
