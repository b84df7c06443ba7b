//! Study configs: TOML, every table `deny_unknown_fields`, every error
//! naming the file and the field or line. The resolved config (defaults
//! filled in) is what a study stores.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use archsearch_core::space::SpaceSpec;
use archsearch_core::{Direction, Space};
use archsearch_tasks::tabular::{TableQuery, TableTask};
use archsearch_tasks::Task;
use archsearch_train::{DeviceChoice, TrainTask, TrainTaskConfig};
use serde::{Deserialize, Serialize};

use crate::registry::StrategyConfig;

/// A whole study config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub study: StudySection,
    /// The search space; tasks with a fixed space (NAS-Bench-201) need none.
    #[serde(default)]
    pub space: Option<SpaceSpec>,
    pub task: TaskConfig,
    pub strategy: StrategyConfig,
}

/// `[study]`: name, seed, direction and budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StudySection {
    /// Study name inside the store (default: the config file's stem).
    pub name: Option<String>,
    /// Seed of the strategy and of every trial.
    pub seed: u64,
    pub direction: Direction,
    /// Budget in trials (queries). Default: 100 when no `cost` is given.
    pub trials: Option<u64>,
    /// Budget in (simulated) seconds of evaluation cost; alone, it is the
    /// only limit.
    pub cost: Option<f64>,
    /// Trials evaluated at once by this process, each in its own thread.
    /// Default: for training tasks, the machine's cores divided by the
    /// task's threads per trial (two one-thread trials beat one two-thread
    /// trial on a 2-core machine, see the README); 1 for tabular tasks.
    /// With more than one worker the order of tells, and so the trials of a
    /// stateful strategy, can differ between runs.
    pub workers: Option<usize>,
    /// A trial whose process crashed this many times (killed, out of
    /// memory, ...) fails with "crashed N times" instead of running again.
    pub crash_limit: u32,
    /// Seconds without a heartbeat after which a running trial's runner
    /// counts as gone and another runner may take the trial over. Runners
    /// beat from their own thread every fifth of this, however long an
    /// epoch takes.
    pub stale_after: f64,
    /// Where trials' checkpoints are shared with every worker of the study:
    /// `file:///shared/folder` or `s3://bucket/prefix` (see the README).
    /// Default: none; a SQLite study keeps them in `STORE.ckpt/` beside the
    /// store, a PostgreSQL study in `archsearch-cache/` of each worker's
    /// working folder (so only that worker resumes them).
    pub artifacts: Option<String>,
}

impl Default for StudySection {
    fn default() -> Self {
        StudySection {
            name: None,
            seed: 0,
            direction: Direction::Maximize,
            trials: None,
            cost: None,
            workers: None,
            crash_limit: 3,
            stale_after: 60.0,
            artifacts: None,
        }
    }
}

/// Most runners one process may start (each holds store connections and a
/// thread; most machines have far fewer cores).
pub const MAX_WORKERS: usize = 256;

/// Checks a runner count against [`MAX_WORKERS`] and the open-file limit.
pub fn check_workers(workers: usize) -> Result<()> {
    if workers == 0 {
        bail!("workers = 0: needs at least 1 worker");
    }
    if workers > MAX_WORKERS {
        bail!("workers = {workers} is more than archsearch runs in one process ({MAX_WORKERS}); start several processes on the same study instead");
    }
    // Each runner holds two store connections (its own and its heartbeat's),
    // each with the database, its WAL and its shared-memory file open.
    let need = 6 * workers as u64 + 64;
    let limit = open_file_limit();
    if limit < need {
        bail!("workers = {workers} needs about {need} open files, but this process may open {limit} (`ulimit -n`); lower `workers` or raise the limit");
    }
    Ok(())
}

/// How many files this process may open (`ulimit -n`).
fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        u64::MAX
    }
}

/// Whether a study name is a plain folder name (it names the study's
/// checkpoint folder, which must stay inside the store's).
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        bail!(
            "[study] name = {name:?}: a study name is letters, digits, `.`, `_` and `-`, not starting with `.` \
             (it names the study's checkpoint folder)"
        );
    }
    Ok(())
}

/// `[task]`: what evaluates an architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TaskConfig {
    /// NAS-Bench-201 (all 15,625 cells, shipped with archsearch).
    Nb201 {
        #[serde(default = "default_search")]
        search_column: String,
        #[serde(default = "default_report")]
        report_column: String,
        /// Simulated seconds per query.
        #[serde(default)]
        cost_per_query: f64,
        /// Simulated seconds per epoch of the evaluated column (12 or 200),
        /// so that a cost budget is proportional to training epochs.
        #[serde(default)]
        cost_per_step: f64,
        /// The fidelity axis multi-fidelity strategies use (default: the
        /// CIFAR-10-valid validation accuracy after 12 and 200 epochs).
        #[serde(default = "default_nb201_fidelities")]
        fidelities: Vec<FidelityColumn>,
    },
    /// Any CSV mapping architectures of `[space]` to metric columns.
    Table {
        /// The CSV file (relative paths are relative to the config file).
        file: PathBuf,
        #[serde(default = "default_arch_column")]
        arch_column: String,
        search_column: String,
        report_column: String,
        #[serde(default)]
        cost_per_query: f64,
        #[serde(default)]
        cost_column: Option<String>,
        /// Simulated seconds per step of the evaluated column's budget.
        #[serde(default)]
        cost_per_step: f64,
        /// The fidelity axis: columns measured at increasing budgets.
        #[serde(default)]
        fidelities: Vec<FidelityColumn>,
    },
    /// Train a network for each architecture (see `archsearch_train`).
    Train(Box<TrainTaskConfig>),
}

/// A column of a table measured at one budget (e.g. epochs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FidelityColumn {
    pub budget: u64,
    pub column: String,
}

fn default_nb201_fidelities() -> Vec<FidelityColumn> {
    archsearch_tasks::tabular::nb201_fidelities().into_iter().map(|(budget, column)| FidelityColumn { budget, column }).collect()
}

fn fidelity_pairs(f: &[FidelityColumn]) -> Vec<(u64, String)> {
    f.iter().map(|f| (f.budget, f.column.clone())).collect()
}

fn default_search() -> String {
    "c10valid_valid12".into()
}
fn default_report() -> String {
    "c10_test200".into()
}
fn default_arch_column() -> String {
    "arch".into()
}

/// Reads a TOML file into `T`, with errors that name the file, line and field.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).map_err(|e| match pinpoint::<T>(&text, &e) {
        Some(located) => anyhow::anyhow!("{}: {located}", path.display()),
        None => anyhow::anyhow!("{}: {e}", path.display()),
    })
}

/// The key an error inside a `kind`-tagged table is about. Such tables
/// (`[space]`, `[task]`, `[strategy]`, `network = {...}`) are read whole
/// before their variant is known, so the TOML parser can only point at the
/// table's header; this finds the key by taking keys out one at a time
/// until the error changes, and names it with its own line.
fn pinpoint<T: serde::de::DeserializeOwned>(text: &str, e: &toml::de::Error) -> Option<String> {
    let at_header = e.span().is_some_and(|s| text[s.start..].starts_with('['));
    if !at_header {
        return None;
    }
    let doc: toml::Table = toml::from_str(text).ok()?;
    let message = e.message().to_string();
    let fails_alike = |d: &toml::Table| match toml::Value::Table(d.clone()).try_into::<T>() {
        Ok(_) => false,
        Err(e) => e.message().lines().next() == message.lines().next(),
    };
    // The key under `path` whose removal changes the error.
    let culprit_in = |path: &[String]| -> Option<String> {
        let table = path.iter().try_fold(&doc, |t, k| t.get(k)?.as_table())?;
        table
            .keys()
            .filter(|k| *k != "kind")
            .find(|k| {
                let mut d = doc.clone();
                let parent = path.iter().try_fold(&mut d, |t, k| t.get_mut(k)?.as_table_mut());
                parent.map(|t| t.remove(k.as_str())).is_some() && !fails_alike(&d)
            })
            .cloned()
    };
    // Descend while the culprit is a table holding a culprit of its own.
    let mut path: Vec<String> = Vec::new();
    while path.len() < 4 {
        let Some(key) = culprit_in(&path) else { break };
        path.push(key);
    }
    if path.len() < 2 {
        return None;
    }
    // The line of the key: the first `key =` (or `key.`) after its table's header.
    let header = format!("[{}]", path[0]);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.trim() == header).unwrap_or(0);
    let key = path.get(1).unwrap_or(&path[0]);
    let line = lines.iter().enumerate().skip(start + 1).find(|(_, l)| {
        let l = l.trim_start();
        l.strip_prefix(key.as_str()).is_some_and(|r| r.trim_start().starts_with('=') || r.starts_with('.'))
    });
    let (section, rest) = (&path[0], path[1..].join("."));
    let place = match line {
        Some((i, _)) => format!("line {}, ", i + 1),
        None => String::new(),
    };
    Some(format!("{place}[{section}] `{rest}`: {message}"))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let mut c: Config = read_toml(path)?;
        if c.study.name.is_none() {
            // The file's stem, made a plain folder name.
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let clean: String = stem.chars().map(|ch| if ch.is_ascii_alphanumeric() || "._-".contains(ch) { ch } else { '-' }).collect();
            let clean = clean.trim_start_matches('.').to_string();
            c.study.name = Some(if clean.is_empty() { "study".into() } else { clean });
        }
        // Table files are relative to the config file, and stored absolute
        // (so the study is the same whichever folder `run` starts in).
        if let TaskConfig::Table { file, .. } = &mut c.task {
            if file.is_relative() {
                if let Some(dir) = path.parent() {
                    *file = dir.join(&*file);
                }
            }
            if let Ok(abs) = std::fs::canonicalize(&*file) {
                *file = abs;
            }
        }
        c.strategy = c.strategy.resolve();
        if c.study.trials.is_none() && c.study.cost.is_none() {
            c.study.trials = Some(100);
        }
        if c.study.workers.is_none() {
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            // Never more than one process may run (see `check_workers`).
            let most = (open_file_limit().saturating_sub(64) / 6).clamp(1, MAX_WORKERS as u64) as usize;
            c.study.workers = Some(match &c.task {
                TaskConfig::Train(t) => (cores / t.threads.max(1) as usize).clamp(1, most),
                _ => 1,
            });
        }
        c.check().map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        Ok(c)
    }

    /// Checks everything that can be checked without reading the data: the
    /// name, budget, space, strategy, the task's settings and a table's
    /// columns (from its header).
    pub fn check(&self) -> Result<()> {
        check_name(self.name())?;
        if self.study.trials.is_none() && self.study.cost.is_none() {
            bail!("[study] needs a budget: `trials` or `cost`");
        }
        if let Some(w) = self.study.workers {
            check_workers(w).context("[study]")?;
        }
        if !(self.study.stale_after > 0.0 && self.study.stale_after.is_finite()) {
            bail!("[study] stale_after = {}: must be a positive number of seconds", self.study.stale_after);
        }
        if self.study.trials == Some(0) {
            bail!("[study] trials = 0: the budget must be at least 1 trial");
        }
        if let Some(c) = self.study.cost {
            if c.is_nan() || c <= 0.0 {
                bail!("[study] cost = {c}: the budget must be positive");
            }
        }
        let space = self.space().context("[space]")?;
        match &self.strategy {
            StrategyConfig::Pbt(p) => {
                p.check().context("[strategy]")?;
                if !matches!(self.task, TaskConfig::Train(_)) {
                    bail!("[strategy] kind = \"pbt\" needs `[task] kind = \"train\"`");
                }
            }
            s => {
                s.build(&space, 0).context("[strategy]")?;
                // A `trials` budget counts architectures: one bracket must fit.
                if let (Some(t), Some(n)) = (self.study.trials, s.first_bracket(&space)?) {
                    if t < n as u64 {
                        bail!(
                            "[study] trials = {t} is fewer than the {n} architectures of one `{}` bracket, so none would reach \
                             max_budget; raise `trials`, lower the bracket (`n`, `eta`), or budget in `cost`",
                            s.name()
                        );
                    }
                }
            }
        }
        if let TaskConfig::Train(t) = &self.task {
            t.check(&space).context("[task]")?;
        }
        self.check_columns()?;
        Ok(())
    }

    /// A table task's columns exist in its table (read from the header only).
    fn check_columns(&self) -> Result<()> {
        let (columns, table, named) = match &self.task {
            TaskConfig::Nb201 { search_column, report_column, fidelities, .. } => {
                let mut named = vec![("search_column", search_column.clone()), ("report_column", report_column.clone())];
                named.extend(fidelities.iter().map(|f| ("fidelities", f.column.clone())));
                (archsearch_tasks::tabular::nb201_columns(), "the NAS-Bench-201 table".to_string(), named)
            }
            TaskConfig::Table { file, arch_column, search_column, report_column, cost_column, fidelities, .. } => {
                let Ok(f) = std::fs::File::open(file) else { return Ok(()) }; // reported with its reason when the task is built
                let columns = archsearch_tasks::tabular::csv_columns(&file.display().to_string(), f)?;
                if columns.is_empty() {
                    return Ok(()); // an empty file: reported when the task is built
                }
                let mut named = vec![
                    ("arch_column", arch_column.clone()),
                    ("search_column", search_column.clone()),
                    ("report_column", report_column.clone()),
                ];
                named.extend(cost_column.iter().map(|c| ("cost_column", c.clone())));
                named.extend(fidelities.iter().map(|f| ("fidelities", f.column.clone())));
                (columns, file.display().to_string(), named)
            }
            TaskConfig::Train(_) => return Ok(()),
        };
        for (field, column) in named {
            if !columns.contains(&column) {
                let shown: Vec<&str> = columns.iter().map(|c| c.as_str()).filter(|c| *c != "arch").take(12).collect();
                let more = if columns.len() > 13 { ", …" } else { "" };
                bail!("[task] {field} = `{column}` is not a column of {table} (columns: {}{more})", shown.join(", "));
            }
        }
        Ok(())
    }

    /// The search space of the study.
    pub fn space(&self) -> Result<Space> {
        match (&self.task, &self.space) {
            (TaskConfig::Nb201 { .. }, None | Some(SpaceSpec::Nb201 { .. })) => {
                Ok(self.space.as_ref().map(|s| s.build()).transpose()?.unwrap_or_else(Space::nb201))
            }
            (TaskConfig::Nb201 { .. }, Some(_)) => bail!("the nb201 task needs `kind = \"nb201\"` (or no [space])"),
            (TaskConfig::Table { .. }, None) => bail!("a table task needs a [space] that its architecture column encodes"),
            (TaskConfig::Train(_), None) => bail!("a training task needs a [space] (e.g. a sequence of macro ops)"),
            (_, Some(s)) => Ok(s.build()?),
        }
    }

    /// Builds the task (reading its data); `device` overrides a training task's device.
    pub fn task(&self, device: Option<DeviceChoice>) -> Result<Arc<dyn Task>> {
        Ok(match &self.task {
            TaskConfig::Nb201 { search_column, report_column, cost_per_query, cost_per_step, fidelities } => {
                let q = TableQuery {
                    cost_per_query: *cost_per_query,
                    cost_per_step: *cost_per_step,
                    fidelities: fidelity_pairs(fidelities),
                    ..TableQuery::new(search_column, report_column)
                };
                Arc::new(TableTask::nb201(q)?)
            }
            TaskConfig::Table {
                file,
                arch_column,
                search_column,
                report_column,
                cost_per_query,
                cost_column,
                cost_per_step,
                fidelities,
            } => {
                let q = TableQuery {
                    cost_per_query: *cost_per_query,
                    cost_column: cost_column.clone(),
                    cost_per_step: *cost_per_step,
                    fidelities: fidelity_pairs(fidelities),
                    ..TableQuery::new(search_column, report_column)
                };
                Arc::new(TableTask::from_csv(file, self.space()?, arch_column, q)?)
            }
            TaskConfig::Train(t) => Arc::new(TrainTask::new(t, self.space()?, t.proxy.clone(), t.evaluate_test, device)?),
        })
    }

    /// The study's name.
    pub fn name(&self) -> &str {
        self.study.name.as_deref().unwrap_or("study")
    }

    /// The config of the retraining study of a training task: the `top`
    /// architectures (canonical strings) trained at the target fidelity, with
    /// test accuracy. `None` if the task has no target fidelity.
    pub fn target_study(&self, architectures: Vec<String>) -> Option<Config> {
        let TaskConfig::Train(t) = &self.task else { return None };
        let target = t.target.clone()?;
        let mut task = t.clone();
        task.proxy = target;
        task.target = None;
        task.evaluate_test = true;
        let n = architectures.len() as u64;
        // Fewer trials than cores: give each trial more threads.
        let cores = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1);
        let workers = self.study.workers.unwrap_or(1).min(n as usize).max(1);
        task.threads = task.threads.max((cores / workers) as i32);
        Some(Config {
            study: StudySection {
                name: Some(format!("{}.target", self.name())),
                trials: Some(n),
                cost: None,
                workers: Some(workers),
                ..self.study.clone()
            },
            space: self.space.clone(),
            task: TaskConfig::Train(task),
            strategy: StrategyConfig::Fixed(archsearch_core::strategies::fixed::Config { architectures }),
        })
    }

    /// The resolved config as TOML, as stored with the study.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("configs serialise")
    }
}

/// Fields a study may change between runs: its budget (raising it extends
/// the study) and how it executes (runners, crash limit, staleness, device,
/// threads, where its data lies). Everything else defines the study.
const MAY_DIFFER: [&str; 10] = [
    "study.trials",
    "study.cost",
    "study.workers",
    "study.crash_limit",
    "study.stale_after",
    "study.artifacts",
    "task.device",
    "task.threads",
    "task.data_dir",
    "task.download",
];

/// The config a study that exists with `stored` runs with when `run` is
/// given `file`: the stored one with the file's budget and execution
/// settings. Any other difference is an error that lists every differing
/// field with both values.
pub fn reconcile(stored: &Config, file: &Config) -> Result<Config> {
    let (a, b) = (toml::Value::try_from(stored)?, toml::Value::try_from(file)?);
    let mut diffs = Vec::new();
    diff("", &a, &b, &mut diffs);
    let defining: Vec<&(String, String, String)> = diffs.iter().filter(|(k, _, _)| !MAY_DIFFER.contains(&k.as_str())).collect();
    if !defining.is_empty() {
        let lines: Vec<String> = defining.iter().map(|(k, s, f)| format!("  {k}: stored {s}, file {f}")).collect();
        bail!(
            "it was created with another config, and these fields differ:\n{}\nonly the budget (`trials`, `cost`) and how it runs (`workers`, `device`, `artifacts`, ...) may change; \
             give the new config another `[study] name` or another store (`--study`)",
            lines.join("\n")
        );
    }
    let mut out = stored.clone();
    out.study.trials = file.study.trials;
    out.study.cost = file.study.cost;
    out.study.workers = file.study.workers;
    out.study.crash_limit = file.study.crash_limit;
    out.study.stale_after = file.study.stale_after;
    out.study.artifacts = file.study.artifacts.clone();
    if let (TaskConfig::Train(o), TaskConfig::Train(f)) = (&mut out.task, &file.task) {
        o.device = f.device;
        o.threads = f.threads;
        o.data_dir = f.data_dir.clone();
        o.download = f.download;
    }
    Ok(out)
}

/// Every leaf that differs between two TOML trees, as `(path, a, b)`.
fn diff(path: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<(String, String, String)>) {
    use toml::Value::Table;
    let show = |v: Option<&toml::Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "(none)".into());
    match (a, b) {
        (Table(x), Table(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff(&p, u, v, out),
                    (u, v) => out.push((p, show(u), show(v))),
                }
            }
        }
        _ if a != b => out.push((path.to_string(), a.to_string(), b.to_string())),
        _ => {}
    }
}
