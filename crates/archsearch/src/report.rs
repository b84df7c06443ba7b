//! What `archsearch show` prints: trials and the best one, as a table or JSON.

use std::fmt::Write as _;

use archsearch_store::{StudyRecord, TrialRecord};
use serde::Serialize;

use crate::study::best;

#[derive(Serialize)]
pub struct StudyReport<'a> {
    pub study: &'a StudyRecord,
    pub trials: &'a [TrialRecord],
    pub best: Option<&'a TrialRecord>,
    pub complete: usize,
    pub failed: usize,
    pub pruned: usize,
    pub running: usize,
}

pub fn study_report<'a>(study: &'a StudyRecord, trials: &'a [TrialRecord]) -> StudyReport<'a> {
    use archsearch_core::TrialState::*;
    let count = |s| trials.iter().filter(|t| t.state == s).count();
    StudyReport {
        study,
        trials,
        best: best(trials, study.direction),
        complete: count(Complete),
        failed: count(Fail),
        pruned: count(Pruned),
        running: count(Running),
    }
}

fn fmt_metrics(t: &TrialRecord) -> String {
    t.metrics.iter().map(|(k, v)| format!("{k}={v:.4}")).collect::<Vec<_>>().join(" ")
}

/// A one-paragraph summary: best architecture, its metrics, trials done/failed.
pub fn summary(r: &StudyReport<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "study `{}`: {} trials ({} complete, {} failed, {} pruned, {} running)",
        r.study.name,
        r.trials.len(),
        r.complete,
        r.failed,
        r.pruned,
        r.running
    );
    match r.best {
        Some(b) => {
            let _ = writeln!(s, "best: trial {} value {:.4}", b.number, b.value.unwrap_or(f64::NAN));
            let _ = writeln!(s, "  architecture: {}", b.arch);
            let _ = writeln!(s, "  metrics: {}", fmt_metrics(b));
        }
        None => {
            let _ = writeln!(s, "no complete trial yet");
        }
    }
    s
}

/// The trial table followed by the summary.
pub fn table(r: &StudyReport<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:>6}  {:<8}  {:>10}  {:<40}  metrics / error", "trial", "state", "value", "architecture");
    for t in r.trials {
        let value = t.value.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        let extra = t.error.clone().unwrap_or_else(|| fmt_metrics(t));
        let _ = writeln!(s, "{:>6}  {:<8}  {:>10}  {:<40}  {}", t.number, t.state.as_str(), value, t.arch, extra);
    }
    s.push('\n');
    s.push_str(&summary(r));
    s
}
