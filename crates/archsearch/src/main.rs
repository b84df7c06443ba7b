//! The `archsearch` command line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use archsearch::bench::replay;
use archsearch::config::{read_toml, Config};
use archsearch::registry::StrategyConfig;
use archsearch::report::{study_report, summary, table};
use archsearch::study::{checkpoint_dir, Study};
use archsearch::{out, outln};
use archsearch_core::space::SpaceSpec;
use archsearch_tasks::tabular::{TableQuery, TableTask};
use archsearch_train::DeviceChoice;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "archsearch", version, about = "Neural architecture search: black-box, one-shot and population-based.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `run` and `worker` execute a study.
#[derive(clap::Args)]
struct HowToRun {
    /// Where checkpoints are shared (overrides `[study] artifacts`):
    /// file:///shared/folder or s3://bucket/prefix.
    #[arg(long)]
    artifacts: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Where training tasks train (overrides the config).
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Trials at once in this process (overrides `[study] workers`).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Run (or resume) the study a config describes, then retrain its best
    /// architectures at the target fidelity (if the task has one).
    Run {
        /// The study config (TOML).
        config: PathBuf,
        /// The study store: a path, sqlite://PATH or postgres://USER@HOST/DB
        /// (default: NAME.db).
        #[arg(long)]
        study: Option<String>,
        #[command(flatten)]
        how: HowToRun,
    },
    /// Join a study as one of many workers (on this machine or others):
    /// take trials until the study's budget is spent, sharing it with every
    /// other worker of the same store. Start the same command any number of
    /// times, anywhere that reaches the store (and the artifact store). The
    /// retraining at the target fidelity is left to `run`.
    Worker {
        /// The study config (TOML); every worker uses the same one.
        config: PathBuf,
        /// The shared study store: postgres://USER@HOST/DB (or a SQLite path
        /// for workers on one machine).
        #[arg(long)]
        study: String,
        #[command(flatten)]
        how: HowToRun,
    },
    /// List a study's trials and its best one.
    Show {
        /// The study store: a path, sqlite://PATH or postgres://USER@HOST/DB.
        study: String,
        /// Which study of the store (default: all).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write a self-contained HTML report (inline SVG plots and their data
    /// tables) of a study store, or of a file of `bench --json` lines.
    Report {
        /// The study store (a path, sqlite://PATH or postgres://USER@HOST/DB), or a bench results file.
        study: String,
        /// Which study of the store (default: all).
        #[arg(long)]
        name: Option<String>,
        /// The HTML file to write.
        #[arg(short, long, default_value = "report.html")]
        out: PathBuf,
        /// Also print the report's data tables as text.
        #[arg(long)]
        tables: bool,
    },
    /// Serve a live report of a study store on a local port; it refreshes
    /// while workers run (the store is only read).
    Dashboard {
        /// The study store: a path, sqlite://PATH or postgres://USER@HOST/DB.
        study: String,
        /// Which study of the store (default: all).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The address to listen on (127.0.0.1: this machine only).
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
    },
    /// Export a trained network for PyTorch: `model.py` (a standalone
    /// module), `model.safetensors` (its weights) and `architecture.json`.
    Export {
        /// The study store: a path, sqlite://PATH or postgres://USER@HOST/DB.
        study: String,
        /// Which study (default: the newest retraining study, `NAME.target`,
        /// else the only training study).
        #[arg(long)]
        name: Option<String>,
        /// Which trial (default: the study's best).
        #[arg(long)]
        trial: Option<u64>,
        /// The folder to write.
        #[arg(short, long)]
        out: PathBuf,
        /// Check with PyTorch that the export's logits on a test batch equal
        /// archsearch's (to 1e-5).
        #[arg(long)]
        verify: bool,
        /// Python with torch for --verify.
        #[arg(long, default_value = ".venv/bin/python")]
        python: PathBuf,
    },
    /// Run several PBT variants × seeds of a PBT config; print mean ± std of
    /// the best members' test accuracy and the compute each used.
    Compare {
        /// A config with `[strategy] kind = "pbt"`.
        config: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "pbt-nas,no-mixing,copy,reinit,mutation,random")]
        variants: Vec<String>,
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// The store all runs go to (default: NAME-compare.db).
        #[arg(long)]
        study: Option<String>,
        #[arg(long, value_enum)]
        device: Option<DeviceArg>,
        #[arg(long)]
        workers: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Measure how well proxies (cheap columns or fidelities) rank
    /// architectures as the target does: Kendall τ, Spearman ρ, top-k
    /// overlap, regret and cost ratio.
    ProxyCheck {
        /// A proxy-check file (`[task]` and `[check]`).
        config: PathBuf,
        /// The store (default: NAME.db).
        #[arg(long)]
        study: Option<String>,
        #[arg(long, value_enum)]
        device: Option<DeviceArg>,
        #[arg(long)]
        workers: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Replay strategies on a tabular task for many seeds; print mean ± std.
    Bench(Box<BenchArgs>),
    /// Train the reference CNN and MLP with archsearch and with PyTorch (same
    /// batch, optimiser and threads) and print ms/step, the ratio, and the
    /// worker pool's total throughput.
    BenchTrain {
        #[arg(long, default_value_t = 200)]
        steps: usize,
        #[arg(long, default_value_t = 128)]
        batch: i64,
        /// Concurrent one-thread trainings in the pool measurement.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Python with torch for the PyTorch side (default: .venv/bin/python).
        #[arg(long, default_value = ".venv/bin/python")]
        python: PathBuf,
        /// Folder of the Fashion-MNIST files.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where both sides train.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
    },
    /// Check gradient estimators of ∇α E[f(h)] on a categorical problem whose
    /// exact gradient is known (enumeration): bias and variance of REINFORCE,
    /// soft and straight-through Gumbel-softmax at several temperatures, and
    /// RELAX.
    BenchEstimators {
        /// One-sample estimates per estimator.
        #[arg(long, default_value_t = 4000)]
        samples: usize,
        #[arg(long, default_value_t = 4)]
        decisions: usize,
        #[arg(long, default_value_t = 5)]
        options: usize,
        /// Seed of the problem and of the samples.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// One JSON object per estimator.
        #[arg(long)]
        json: bool,
    },
    /// Measure the per-trial cost of ask + tell + store as a study grows
    /// (any strategy, on the NAS-Bench-201 table).
    BenchStore {
        #[arg(long, default_value_t = 100_000)]
        trials: u64,
        /// The strategy (multi-fidelity ones use the table's 12/200-epoch axis).
        #[arg(long, default_value = "evolution")]
        strategy: String,
        /// The study store: a path, or postgres://… (default: a temporary
        /// SQLite file). On a server, the study gets a name of its own.
        #[arg(long)]
        study: Option<String>,
    },
    /// Throughput of many worker processes on one study: for each count of
    /// processes, a fresh copy of CONFIG's study (its own name) run by that
    /// many `archsearch worker` processes to its budget; prints trials per
    /// second and per hour and the speed-up over one process.
    BenchWorkers {
        /// The study config (a tabular task measures the store, a training
        /// task the training throughput).
        config: PathBuf,
        /// The shared study store (postgres://… or a SQLite path).
        #[arg(long)]
        study: String,
        /// Worker processes to compare.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        processes: Vec<usize>,
        /// Override the config's `[study] trials`.
        #[arg(long)]
        trials: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

impl DeviceArg {
    fn choice(self) -> DeviceChoice {
        match self {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchTask {
    Nb201,
    Table,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, value_enum, default_value = "nb201")]
    task: BenchTask,
    /// CSV of a table task.
    #[arg(long)]
    table: Option<PathBuf>,
    /// Space file (TOML) of a table task.
    #[arg(long)]
    space: Option<PathBuf>,
    /// Architecture column of a table task.
    #[arg(long, default_value = "arch")]
    arch_column: String,
    /// Comma-separated strategies.
    #[arg(long, value_delimiter = ',', default_value = "random,evolution,reinforce,reinforce-lstm,ppo,ppo-lstm")]
    strategies: Vec<String>,
    /// Evaluations (queries) per run (default 100 unless --cost is given).
    #[arg(long)]
    budget: Option<u64>,
    /// Simulated cost per run instead: a run stops once it has spent this
    /// much (cost of a query = --cost-per-step × the budget of its column).
    #[arg(long)]
    cost: Option<f64>,
    /// Simulated cost per step (epoch) of the evaluated column's budget.
    #[arg(long, default_value_t = 1.0)]
    cost_per_step: f64,
    /// The table's fidelity axis as BUDGET=COLUMN pairs (NAS-Bench-201
    /// default: 12=c10valid_valid12,200=c10valid_valid200).
    #[arg(long, value_delimiter = ',')]
    fidelities: Option<Vec<String>>,
    /// Multi-fidelity strategies: smallest budget (default: the axis's smallest).
    #[arg(long)]
    min_budget: Option<u64>,
    /// Multi-fidelity strategies: largest budget (default: the axis's largest).
    #[arg(long)]
    max_budget: Option<u64>,
    /// Multi-fidelity strategies: reduction factor η (default: max/min on a
    /// two-level axis, else 3).
    #[arg(long)]
    eta: Option<f64>,
    /// Runs (seeds 0..N) per strategy.
    #[arg(long, default_value_t = 500)]
    seeds: u64,
    #[arg(long, default_value = "c10valid_valid12")]
    search_column: String,
    #[arg(long, default_value = "c10_test200")]
    report_column: String,
    /// Override the learning rate of the controller strategies.
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// One JSON object per line per strategy.
    #[arg(long)]
    json: bool,
}

/// The stores this process runs studies in (for releasing trials on Ctrl-C).
static OPEN_STORES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn main() {
    // Die quietly on a closed pipe (`archsearch show X.db | head`), as Unix
    // tools do, instead of panicking on the failed write.
    // SAFETY: resetting a signal's disposition to its default before any
    // thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Colours only on a terminal (not in CI logs or files).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ARCHSEARCH_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    // Ctrl-C or SIGTERM: give this process's running trials back (they run
    // again on the next `run` without counting as crashes), then exit.
    let _ = ctrlc::set_handler(|| {
        let urls = OPEN_STORES.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut released = 0;
        for url in urls {
            if let Ok(mut store) = archsearch_store::open(&url) {
                for owner in archsearch_store::live_owners() {
                    released += store.release(&owner).unwrap_or(0);
                }
            }
        }
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "interrupted: {released} running trial(s) released; `run` again to continue");
        // Leave at once: running exit handlers (libtorch's among them) while
        // other threads still train can crash. The store is crash-safe.
        // SAFETY: _exit ends the process without running any more Rust code.
        unsafe { libc::_exit(130) };
    });
    if let Err(e) = real_main(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config, study, how } => run(config, study, how),
        Command::Worker { config, study, how } => worker(config, &study, how),
        Command::Show { study, name, json } => show(&study, name.as_deref(), json),
        Command::Bench(args) => bench(*args),
        Command::Report { study, name, out, tables } => report(&study, name.as_deref(), &out, tables),
        Command::Dashboard { study, name, port, host } => {
            let d = archsearch_report::Dashboard::bind(&study, name.as_deref(), (host, port).into())?;
            outln!("dashboard of {study} at http://{}/ (Ctrl-C to stop)", d.local_addr()?)?;
            Ok(d.serve()?)
        }
        Command::Export { study, name, trial, out, verify, python } => {
            export(&study, name.as_deref(), trial, &out, verify.then_some(&*python))
        }
        Command::ProxyCheck { config, study, device, workers, json } => proxy_check(config, study, device, workers, json),
        Command::Compare { config, variants, seeds, study, device, workers, json } => {
            compare(config, variants, seeds, study, device, workers, json)
        }
        Command::BenchStore { trials, strategy, study } => bench_store(trials, &strategy, study),
        Command::BenchWorkers { config, study, processes, trials } => bench_workers(&config, &study, &processes, trials),
        Command::BenchEstimators { samples, decisions, options, seed, json } => bench_estimators(samples, decisions, options, seed, json),
        Command::BenchTrain { steps, batch, workers, python, data_dir, device } => {
            let device = device.choice().resolve()?;
            archsearch::bench::train_speed(steps, batch, workers, &python, data_dir.as_deref(), device)
        }
    }
}

/// Loads a config and applies `--artifacts`.
fn load_config(path: &std::path::Path, artifacts: Option<String>) -> Result<Config> {
    let mut config = Config::load(path)?;
    if artifacts.is_some() {
        config.study.artifacts = artifacts;
    }
    Ok(config)
}

fn worker(config_path: PathBuf, url: &str, how: HowToRun) -> Result<()> {
    archsearch_rl::init_thread(1);
    let config = load_config(&config_path, how.artifacts)?;
    let (quiet, device, workers) = (how.quiet, how.device.map(DeviceArg::choice), how.workers);
    if let StrategyConfig::Pbt(p) = &config.strategy {
        archsearch::pbt::work_study(&config, p, url, device, quiet)?;
        outln!("store: {}", archsearch_store::shown_url(url))?;
        return Ok(());
    }
    run_one(&config, url, quiet, device, workers)?;
    outln!("store: {}", archsearch_store::shown_url(url))?;
    Ok(())
}

fn run(config_path: PathBuf, store_url: Option<String>, how: HowToRun) -> Result<()> {
    archsearch_rl::init_thread(1);
    let config = load_config(&config_path, how.artifacts)?;
    let (quiet, device, workers) = (how.quiet, how.device.map(DeviceArg::choice), how.workers);
    let url = store_url.unwrap_or_else(|| format!("{}.db", config.name()));
    if let StrategyConfig::Pbt(p) = &config.strategy {
        archsearch::pbt::run_study(&config, p, &url, device, workers, quiet)?;
        outln!("store: {}", archsearch_store::shown_url(&url))?;
        return Ok(());
    }
    let search = run_one(&config, &url, quiet, device, workers)?;
    // Retrain the best architectures at the target fidelity, if the task has one.
    let top = match &search.config.task {
        archsearch::config::TaskConfig::Train(t) => t.retrain_top,
        _ => 0,
    };
    let mut best: Vec<&archsearch_store::TrialRecord> =
        search.trials.iter().filter(|t| t.state == archsearch_core::TrialState::Complete && t.value.is_some()).collect();
    let dir = search.record.direction;
    best.sort_by(|a, b| dir.fitness(b.value.unwrap()).total_cmp(&dir.fitness(a.value.unwrap())));
    let archs: Vec<String> = best.iter().take(top).map(|t| t.arch.clone()).collect();
    if let (false, Some(mut target)) = (archs.is_empty(), search.config.target_study(archs)) {
        // A longer search may have found other best architectures: they are
        // retrained in a study of their own, named after them.
        let store = archsearch_store::open(&url)?;
        if let Ok(rec) = store.study(target.name()) {
            let stored: Config = toml::from_str(&rec.config).with_context(|| format!("stored config of study `{}`", rec.name))?;
            if stored.strategy != target.strategy {
                let hash = xxhash_rust::xxh3::xxh3_64(target.to_toml().as_bytes()) as u32;
                target.study.name = Some(format!("{}-{hash:08x}", target.name()));
            }
        }
        outln!("\nretraining the best {} at the target fidelity (study `{}`)", target.study.trials.unwrap_or(0), target.name())?;
        run_one(&target, &url, quiet, device, workers)?;
    }
    outln!("store: {}", archsearch_store::shown_url(&url))?;
    Ok(())
}

struct Finished {
    config: Config,
    record: archsearch_store::StudyRecord,
    trials: Vec<archsearch_store::TrialRecord>,
}

fn run_one(config: &Config, url: &str, quiet: bool, device: Option<DeviceChoice>, workers: Option<usize>) -> Result<Finished> {
    if let Some(w) = workers {
        archsearch::config::check_workers(w).context("--workers")?;
    }
    let store = archsearch_store::open(url)?;
    OPEN_STORES.lock().unwrap_or_else(|e| e.into_inner()).push(url.to_string());
    let shown = archsearch_store::shown_url(url);
    let study = Study::open(config, store, device).with_context(|| format!("opening study `{}` in {shown}", config.name()))?;
    let mut study = match checkpoint_dir(url, study.record()) {
        Some(dir) => study.with_checkpoints(dir),
        None => study,
    };
    match &study.config().study.artifacts {
        Some(a) => {
            let store = archsearch::artifacts::open(a).context("[study] artifacts")?;
            study = study.with_artifacts(store);
        }
        None if archsearch_store::is_postgres(url) => tracing::info!(
            "checkpoints stay in this worker's archsearch-cache/: set `[study] artifacts` (or --artifacts) to let workers on \
             other machines resume them"
        ),
        None => {}
    }
    let done = study.record().counts.finished;
    let total = study.budget().trials.unwrap_or(0);
    // A cost budget has no known number of trials: count them on a spinner.
    let bar = match (quiet, total) {
        (true, _) => ProgressBar::hidden(),
        (false, 0) => ProgressBar::new_spinner(),
        (false, n) => ProgressBar::new(n),
    };
    let template = if total == 0 {
        "{spinner} {pos} trials finished  {elapsed_precise}  {msg}"
    } else {
        "{bar:40} {pos}/{len} trials  {elapsed_precise}  {msg}"
    };
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar.set_position(done);
    let best: std::sync::Mutex<Option<f64>> = std::sync::Mutex::new(None);
    let direction = study.record().direction;
    let workers = workers.or(study.config().study.workers).unwrap_or(1).max(1);
    let connect = || archsearch_store::open(url).map_err(anyhow::Error::from);
    study.run_parallel(workers, &connect, &|ev| {
        if let (Some(v), false) = (ev.value, ev.state == archsearch_core::TrialState::Paused) {
            let mut b = best.lock().unwrap_or_else(|e| e.into_inner());
            if b.is_none_or(|b| direction.better(v, b)) {
                *b = Some(v);
                bar.set_message(format!("best {v:.4}"));
            }
        }
        // Paused trials come back; pruned ones finish without an event of their own.
        let finished = u64::from(ev.state.is_finished()) + ev.pruned as u64;
        if !ev.resumed {
            bar.inc(finished);
        }
    })?;
    bar.finish_and_clear();
    let record = study.store().study(&study.record().name)?;
    let trials = study.store().trials(record.id)?;
    out!("{}", summary(&study_report(&record, &trials, &[])))?;
    Ok(Finished { config: study.config().clone(), record, trials })
}

/// Checkpoints of a SQLite study at `X.db` live in `X.db.ckpt/`.
fn proxy_check(config: PathBuf, study: Option<String>, device: Option<DeviceArg>, workers: Option<usize>, json: bool) -> Result<()> {
    let stem = config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "proxy-check".into());
    let url = study.unwrap_or_else(|| format!("{stem}.db"));
    let start = Instant::now();
    let reports = archsearch::proxy::run(&config, &url, device.map(DeviceArg::choice), workers)?;
    if json {
        for r in &reports {
            outln!("{}", serde_json::to_string(r)?)?;
        }
    } else {
        outln!(
            "{:<24} {:<14} {:>6} {:>8} {:>8} {:>12} {:>8} {:>10}",
            "proxy",
            "target",
            "archs",
            "tau",
            "rho",
            "top-k overlap",
            "regret",
            "cost ratio"
        )?;
        for r in &reports {
            outln!(
                "{:<24} {:<14} {:>6} {:>8.3} {:>8.3} {:>8.3} (k={}) {:>8.2} {:>10.3}",
                r.proxy,
                r.target,
                r.architectures,
                r.kendall_tau,
                r.spearman_rho,
                r.topk_overlap,
                r.k,
                r.regret,
                r.cost_ratio
            )?;
        }
        outln!("wall time {:.1} s; store {url}", start.elapsed().as_secs_f64())?;
    }
    Ok(())
}

fn compare(
    config: PathBuf,
    variants: Vec<String>,
    seeds: u64,
    study: Option<String>,
    device: Option<DeviceArg>,
    workers: Option<usize>,
    json: bool,
) -> Result<()> {
    let config = Config::load(&config)?;
    let variants: Vec<archsearch::pbt::Variant> = variants
        .iter()
        .map(|v| {
            serde_json::from_value(serde_json::Value::String(v.trim().to_string()))
                .map_err(|_| anyhow::anyhow!("unknown variant `{v}` (known: pbt-nas, no-mixing, copy, reinit, mutation, pbt, random)"))
        })
        .collect::<Result<_>>()?;
    let url = study.unwrap_or_else(|| format!("{}-compare.db", config.name()));
    let start = Instant::now();
    let rows = archsearch::pbt::compare(&config, &variants, seeds, &url, device.map(DeviceArg::choice), workers)?;
    if json {
        for r in &rows {
            outln!("{}", serde_json::to_string(r)?)?;
        }
    } else {
        outln!("{:<10} {:>18} {:>14} {:>12}", "variant", "test mean ± std", "member-epochs", "wall s/run")?;
        for r in &rows {
            let v = serde_json::to_value(r.variant)?;
            outln!("{:<10} {:>10.2} ± {:<5.2} {:>14} {:>12.0}", v.as_str().unwrap_or(""), r.mean, r.std, r.member_epochs, r.wall_seconds)?;
        }
        outln!("total wall time {:.0} s; store {url}", start.elapsed().as_secs_f64())?;
    }
    Ok(())
}

fn show(url: &str, name: Option<&str>, json: bool) -> Result<()> {
    // Read-only: showing a store never creates, migrates or changes it.
    let store = archsearch_store::open_read_only(url)?;
    let studies = match name {
        Some(n) => vec![store.study(n)?],
        None => store.studies()?,
    };
    for s in &studies {
        let trials = store.trials(s.id)?;
        let members = store.members(s.id)?;
        let r = study_report(s, &trials, &members);
        if json {
            outln!("{}", serde_json::to_string(&r)?)?;
        } else {
            out!("{}", table(&r))?;
        }
    }
    Ok(())
}

/// Whether `input` is a file of bench results (JSON lines) rather than a store.
fn bench_results(input: &str) -> Result<Option<Vec<serde_json::Value>>> {
    use std::io::Read as _;
    let path = std::path::Path::new(input);
    let Ok(file) = std::fs::File::open(path) else { return Ok(None) };
    // A store is never read whole: only its first bytes are looked at.
    let mut head = Vec::new();
    file.take(4096).read_to_end(&mut head).with_context(|| format!("reading {input}"))?;
    if head.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{input}: not a UTF-8 text file of bench results"))?;
    let lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let results = lines.map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{input}, line {}", i + 1))).collect::<Result<_>>()?;
    Ok(Some(results))
}

fn report(input: &str, name: Option<&str>, out: &std::path::Path, tables: bool) -> Result<()> {
    let (title, sections) = match bench_results(input)? {
        Some(results) => (format!("archsearch bench: {input}"), archsearch_report::bench_sections(&results)?),
        None => {
            let store = archsearch_store::open_read_only(input)?;
            archsearch_report::store_sections(store.as_ref(), name)?
        }
    };
    let html = archsearch_report::page(&title, &sections, None);
    std::fs::write(out, &html).with_context(|| format!("writing {}", out.display()))?;
    let plots: usize = sections.iter().map(|s| s.plots.len()).sum();
    outln!("wrote {}: {} sections, {plots} plots, {} KiB", out.display(), sections.len(), html.len() / 1024)?;
    if tables {
        out!("\n{}", archsearch_report::tables_text(&sections))?;
    }
    Ok(())
}

fn export(url: &str, name: Option<&str>, trial: Option<u64>, out: &std::path::Path, python: Option<&std::path::Path>) -> Result<()> {
    let o = archsearch::export::run(url, name, trial, out, python)?;
    outln!("exported trial {} of study `{}` (trained {} epochs): {}", o.trial, o.study, o.epoch, o.arch)?;
    for f in &o.files {
        outln!("  {}", f.display())?;
    }
    if let Some(v) = o.verified {
        outln!(
            "verified: PyTorch's logits on {} test images equal archsearch's (max |difference| {:.2e}, max |logit| {:.2})",
            v.batch,
            v.max_abs_diff.unwrap_or(f64::NAN),
            v.max_abs_logit
        )?;
    }
    outln!("load it in Python:\n  import sys; sys.path.insert(0, {:?})\n  import model\n  net = model.load()", out.display().to_string())?;
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global()?;
    }
    let fidelities: Vec<(u64, String)> = match (&a.fidelities, a.task) {
        (Some(f), _) => f
            .iter()
            .map(|p| {
                let (b, c) = p.split_once('=').with_context(|| format!("--fidelities: `{p}` is not BUDGET=COLUMN"))?;
                Ok((b.trim().parse().with_context(|| format!("--fidelities: `{b}` is not a whole number"))?, c.trim().to_string()))
            })
            .collect::<Result<_>>()?,
        (None, BenchTask::Nb201) => archsearch_tasks::tabular::nb201_fidelities(),
        (None, BenchTask::Table) => Vec::new(),
    };
    let query = TableQuery {
        cost_per_step: a.cost_per_step,
        fidelities: fidelities.clone(),
        ..TableQuery::new(&a.search_column, &a.report_column)
    };
    let task = match a.task {
        BenchTask::Nb201 => TableTask::nb201(query)?,
        BenchTask::Table => {
            let (Some(table), Some(space)) = (&a.table, &a.space) else {
                bail!("--task table needs --table FILE.csv and --space SPACE.toml");
            };
            let spec: SpaceSpec = read_toml(space)?;
            let space_built = spec.build().map_err(|e| anyhow::anyhow!("{}: {e}", space.display()))?;
            TableTask::from_csv(table, space_built, &a.arch_column, query)?
        }
    };
    let ladder = {
        let budgets: Vec<u64> = fidelities.iter().map(|f| f.0).collect();
        let (lo, hi) = (budgets.iter().min().copied(), budgets.iter().max().copied());
        match (a.min_budget.or(lo), a.max_budget.or(hi)) {
            (Some(min), Some(max)) => {
                let eta = a.eta.unwrap_or(if budgets.len() == 2 && max > min { max as f64 / min as f64 } else { 3.0 });
                Some(archsearch::registry::Ladder { min_budget: min, max_budget: max, eta })
            }
            _ => None,
        }
    };
    let mut strategies: Vec<StrategyConfig> =
        a.strategies.iter().map(|s| StrategyConfig::by_name(s.trim(), ladder)).collect::<Result<_>>()?;
    if let Some(lr) = a.learning_rate {
        for s in &mut strategies {
            s.set_learning_rate(lr);
        }
    }
    let space = archsearch_tasks::Task::space(&task);
    for s in &strategies {
        for b in s.budgets(space)? {
            archsearch_tasks::Task::check_budget(&task, b).with_context(|| format!("`{}` asks for budget {b}", s.name()))?;
        }
    }
    let budget =
        archsearch::bench::ReplayBudget { evaluations: a.budget.or(if a.cost.is_none() { Some(100) } else { None }), cost: a.cost };
    if !a.json {
        let per_run = match (budget.evaluations, budget.cost) {
            (Some(n), Some(c)) => format!("{n} evaluations or cost {c}"),
            (Some(n), None) => format!("{n} evaluations"),
            (None, Some(c)) => format!("simulated cost {c} ({} per step)", a.cost_per_step),
            (None, None) => unreachable!(),
        };
        outln!(
            "{per_run} per run, {} seeds; search on `{}`, report `{}` of the architecture each run picked",
            a.seeds,
            a.search_column,
            a.report_column
        )?;
        if let Some(l) = ladder.filter(|_| strategies.iter().any(|s| !s.budgets(space).unwrap_or_default().is_empty())) {
            outln!(
                "multi-fidelity: budgets {}..{} (η = {:.3}) on {}",
                l.min_budget,
                l.max_budget,
                l.eta,
                fidelities.iter().map(|(b, c)| format!("{b}={c}")).collect::<Vec<_>>().join(", ")
            )?;
        }
        outln!(
            "{:<20} {:>16} {:>12} {:>10} {:>12} {:>10} {:>8}",
            "strategy",
            "report mean±std",
            "search mean",
            "distinct",
            "evaluations",
            "cost",
            "wall s"
        )?;
    }
    let start = Instant::now();
    for s in &strategies {
        let r = replay(&task, s, budget, a.seeds)?;
        if a.json {
            outln!("{}", serde_json::to_string(&r)?)?;
        } else {
            outln!(
                "{:<20} {:>9.2} ± {:<4.2} {:>12.2} {:>10.1} {:>12.1} {:>10.0} {:>8.1}",
                r.strategy,
                r.mean,
                r.std,
                r.search_mean,
                r.distinct,
                r.evaluations,
                r.cost,
                r.wall_seconds
            )?;
        }
    }
    if !a.json {
        outln!("total wall time {:.1} s", start.elapsed().as_secs_f64())?;
    }
    Ok(())
}

fn bench_estimators(samples: usize, decisions: usize, options: usize, seed: u64, json: bool) -> Result<()> {
    use archsearch_rl::estimators::{all, measure, Problem};
    let architectures = u32::try_from(decisions).ok().and_then(|d| options.checked_pow(d));
    if samples < 2 || decisions == 0 || options < 2 || architectures.is_none_or(|n| n > 1_000_000) {
        bail!("--samples must be >= 2, --options >= 2, --decisions >= 1, and options^decisions at most 1,000,000 (the exact gradient enumerates them)");
    }
    archsearch_rl::init_thread(1);
    let problem = Problem::new(decisions, options, seed);
    if !json {
        outln!("{decisions} decisions × {options} options, {samples} one-sample estimates each; bias and variance relative to the exact gradient")?;
        outln!("{:<12} {:>6} {:>10} {:>10} {:>12}", "estimator", "τ", "bias", "noise", "variance")?;
    }
    for e in all() {
        let r = measure(&problem, e, samples, seed + 1);
        if json {
            outln!("{}", serde_json::to_string(&r)?)?;
        } else {
            let tau = r.temperature.map(|t| format!("{t}")).unwrap_or_else(|| "-".into());
            outln!("{:<12} {:>6} {:>10.4} {:>10.4} {:>12.4}", r.estimator, tau, r.bias, r.noise, r.variance)?;
        }
    }
    Ok(())
}

fn bench_store(trials: u64, strategy: &str, url: Option<String>) -> Result<()> {
    let dir = tempfile_dir()?;
    let url = url.unwrap_or_else(|| dir.join("bench-store.db").display().to_string());
    // On a server, where other studies live, a name of its own.
    let name =
        if archsearch_store::is_postgres(&url) { format!("bench-store-{:08x}", rand::random::<u32>()) } else { "bench-store".into() };
    let text = format!("[study]\nname = \"{name}\"\ntrials = {trials}\n[task]\nkind = \"nb201\"\n[strategy]\nkind = \"random\"\n");
    let cfg_path = dir.join("bench-store.toml");
    std::fs::write(&cfg_path, text)?;
    let mut config = Config::load(&cfg_path)?;
    let (lo, hi) = (12, 200);
    config.strategy = StrategyConfig::by_name(
        strategy,
        Some(archsearch::registry::Ladder { min_budget: lo, max_budget: hi, eta: hi as f64 / lo as f64 }),
    )?;
    config.check()?;
    let mut study = Study::open(&config, archsearch_store::open(&url)?, None)?;
    let block = (trials / 10).max(1);
    let clock = std::sync::Mutex::new((Instant::now(), 0u64, Vec::new()));
    let started = Instant::now();
    outln!("{strategy}: {trials} trials on NAS-Bench-201, {}", archsearch_store::shown_url(&url))?;
    outln!("{:>12} {:>20}", "evaluations", "µs per evaluation")?;
    study.run(&|_| {
        let mut c = clock.lock().unwrap_or_else(|e| e.into_inner());
        c.1 += 1;
        if c.1 % block == 0 {
            let us = c.0.elapsed().as_secs_f64() * 1e6 / block as f64;
            c.2.push(us);
            let _ = outln!("{:>12} {:>20.1}", c.1, us);
            c.0 = Instant::now();
        }
    })?;
    let (_, told, per_block) = clock.into_inner().unwrap_or_else(|e| e.into_inner());
    if let (Some(first), Some(last)) = (per_block.first(), per_block.last()) {
        outln!("{told} evaluations; last block / first block: {:.2}", last / first)?;
    }
    outln!("mean: {:.1} µs per evaluation (ask, table lookup, tell)", started.elapsed().as_secs_f64() * 1e6 / told.max(1) as f64)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn bench_workers(config_path: &std::path::Path, url: &str, processes: &[usize], trials: Option<u64>) -> Result<()> {
    let base = Config::load(config_path)?;
    let dir = tempfile_dir()?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let stamp = format!("{:08x}", rand::random::<u32>());
    outln!("{:>9} {:>8} {:>10} {:>12} {:>14} {:>9}", "processes", "trials", "wall s", "trials/s", "trials/hour", "speed-up")?;
    let mut first_rate = None;
    for &p in processes {
        anyhow::ensure!(p > 0, "--processes: 0 processes");
        let mut c = base.clone();
        c.study.name = Some(format!("{}-bench-p{p}-{stamp}", base.name()));
        if trials.is_some() {
            c.study.trials = trials;
        }
        let cfg = dir.join(format!("p{p}.toml"));
        std::fs::write(&cfg, c.to_toml())?;
        let start = Instant::now();
        let children: Vec<std::process::Child> = (0..p)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args(["worker", cfg.to_str().unwrap_or_default(), "--study", url, "--quiet"])
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .context("starting a worker")
            })
            .collect::<Result<_>>()?;
        for mut child in children {
            let status = child.wait()?;
            anyhow::ensure!(status.success(), "a worker failed ({status})");
        }
        let wall = start.elapsed().as_secs_f64();
        let store = archsearch_store::open_read_only(url)?;
        let rec = store.study(c.name())?;
        let done = rec.counts.finished;
        let rate = done as f64 / wall;
        let speedup = rate / *first_rate.get_or_insert(rate);
        outln!("{p:>9} {done:>8} {wall:>10.1} {rate:>12.2} {:>14.0} {speedup:>8.2}×", rate * 3600.0)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("archsearch-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
