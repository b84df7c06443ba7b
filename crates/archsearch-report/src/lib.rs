//! HTML reports of archsearch studies and benches.
//!
//! A report is a list of [`Section`]s, each a titled group of plots (inline
//! SVG drawn with plotters) and the data tables behind them. The sections of
//! a study come from [`study_sections`], which picks what applies to the
//! study's data:
//!
//! * a summary (study, direction, seed, trial counts by state), always;
//! * search progress, for a study with trials: best-so-far against trial
//!   number, wall time and cumulative cost, every trial's value, and how
//!   often each option appears in the top 10 % of complete trials;
//! * multi-fidelity, when trials reported intermediate values;
//! * population-based training, when the study recorded members: fitness
//!   over steps and the lineage graph;
//! * proxy checks, when the study carries a `proxy_check` attribute.
//!
//! [`bench_sections`] does the same for the JSON lines of a bench. [`page`]
//! wraps sections into one self-contained HTML page (inline CSS, no external
//! resources), optionally with a script that keeps it live;
//! [`sections_html`] is the body fragment alone; [`tables_text`] writes the
//! tables as plain text for snapshot tests.
//!
//! [`Dashboard`] serves the same page live from a study store, over HTTP on
//! a local port, re-reading the store (read-only) on every refresh.
//!
//! This crate never prints and never writes files.

mod bench;
mod dashboard;
mod data;
mod html;
mod plots;
mod study;

use std::fmt::Write as _;

use serde::Serialize;

pub use bench::bench_sections;
pub use dashboard::Dashboard;
pub use data::StudyData;
pub use html::{page, sections_html};
pub use study::study_sections;

/// Errors of report building.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] archsearch_store::StoreError),
    /// The stored config of a study could not be read (its TOML, or its `[space]`).
    #[error("study `{study}`: stored config: {reason}")]
    Config { study: String, reason: String },
    /// A bench result (0-based index among the results) is not a replay result.
    #[error("bench result {index}: {source}")]
    Bench { index: usize, source: serde_json::Error },
    /// The dashboard's server failed (binding its port, serving).
    #[error("dashboard: {0}")]
    Serve(String),
}

/// One titled part of a report: its plots (inline SVG strings) and the data
/// tables behind them.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub title: String,
    pub plots: Vec<Plot>,
    pub tables: Vec<Table>,
}

/// One plot: a title (also drawn inside the SVG) and a whole `<svg>` document.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    pub title: String,
    pub svg: String,
}

/// A data table: every cell already formatted as text. Tables hold no
/// timestamps or wall-clock times, so a deterministic study gives the same
/// tables on every run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// The title and sections of a report on the store `store`: of the study
/// `name`, or of every study in it (each section's title then names its
/// study).
pub fn store_sections(store: &dyn archsearch_store::Storage, name: Option<&str>) -> Result<(String, Vec<Section>), ReportError> {
    let studies = match name {
        Some(n) => vec![store.study(n)?],
        None => store.studies()?,
    };
    let several = studies.len() > 1;
    let mut sections = Vec::new();
    for study in &studies {
        for mut s in study_sections(&StudyData::load(store, study)?) {
            if several {
                s.title = format!("{}: {}", study.name, s.title);
            }
            sections.push(s);
        }
    }
    let title = match studies.as_slice() {
        [one] => format!("archsearch: {}", one.name),
        _ => format!("archsearch: {}", studies.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")),
    };
    Ok((title, sections))
}

/// The data tables of `sections` as plain text, columns aligned: a
/// `## section` line, then a `### table` line, a header and one line per row.
/// Deterministic for a deterministic study (tables never hold wall-clock
/// times or timestamps).
pub fn tables_text(sections: &[Section]) -> String {
    let mut out = String::new();
    for s in sections.iter().filter(|s| !s.tables.is_empty()) {
        let _ = writeln!(out, "## {}", s.title);
        for t in &s.tables {
            let _ = writeln!(out, "### {}", t.title);
            let ncol = t.columns.len().max(t.rows.iter().map(Vec::len).max().unwrap_or(0));
            let mut width = vec![0usize; ncol];
            for row in std::iter::once(&t.columns).chain(&t.rows) {
                for (i, cell) in row.iter().enumerate() {
                    width[i] = width[i].max(cell.chars().count());
                }
            }
            for row in std::iter::once(&t.columns).chain(&t.rows) {
                let mut line = String::new();
                for (i, cell) in row.iter().enumerate() {
                    if i > 0 {
                        line.push_str("  ");
                    }
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', width[i] - cell.chars().count()));
                }
                let _ = writeln!(out, "{}", line.trim_end());
            }
            out.push('\n');
        }
    }
    out
}

/// A number for a table: six significant digits, trailing zeros dropped,
/// `nan`/`inf` spelled out.
pub(crate) fn num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}").to_lowercase();
    }
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs().log10().floor() as i32;
    if !(-4..15).contains(&mag) {
        return format!("{v:.5e}");
    }
    let decimals = (5 - mag).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// An optional number for a table (`-` when absent).
pub(crate) fn opt_num(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_six_significant_digits() {
        assert_eq!(num(0.9137254901), "0.913725");
        assert_eq!(num(93.37), "93.37");
        assert_eq!(num(3.0), "3");
        assert_eq!(num(-0.0000001), "-1.00000e-7");
        assert_eq!(num(123456789.0), "123456789");
        assert_eq!(num(f64::NAN), "nan");
        assert_eq!(opt_num(None), "-");
    }

    #[test]
    fn tables_text_aligns_columns() {
        let s = Section {
            title: "S".into(),
            plots: vec![],
            tables: vec![Table {
                title: "T".into(),
                columns: vec!["a".into(), "bb".into()],
                rows: vec![vec!["xxx".into(), "1".into()], vec!["y".into(), "22".into()]],
            }],
        };
        assert_eq!(tables_text(&[s]), "## S\n### T\na    bb\nxxx  1\ny    22\n\n");
    }
}
