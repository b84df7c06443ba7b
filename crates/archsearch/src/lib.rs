//! archsearch: the study runner, configs, benchmarks and reports behind the
//! `archsearch` command line.
//!
//! A study is `(space, task, strategy)` plus a budget and a seed, all read
//! from one TOML config ([`config`]). [`study::Study`] runs the ask →
//! evaluate → tell loop against a [`archsearch_store::Storage`], resuming
//! whatever the store already holds. [`bench`] replays strategies on tabular
//! tasks for many seeds, in memory.

/// `println!` that returns an error instead of panicking when stdout is
/// closed or full (`archsearch show X.db > /dev/full`).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(|e| anyhow::anyhow!("writing to standard output: {e}"))
    }};
}

/// `print!` that returns an error instead of panicking (see [`outln!`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut o = std::io::stdout().lock();
        write!(o, $($arg)*).and_then(|_| o.flush()).map_err(|e| anyhow::anyhow!("writing to standard output: {e}"))
    }};
}

/// The message of a caught panic (tch raises libtorch errors as panics).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<String>().map(|s| s.as_str()).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("(no message)")
}

pub mod artifacts;
pub mod bench;
pub mod config;
pub mod export;
pub mod pbt;
pub mod proxy;
pub mod registry;
pub mod report;
pub mod study;

pub use archsearch_core as core;
pub use archsearch_store as store;
pub use archsearch_tasks as tasks;
