//! What `archsearch show` prints: trials and the best one, as a table or JSON.

use std::fmt::Write as _;

use archsearch_store::{MemberRecord, StudyRecord, TrialRecord};
use serde::Serialize;

use crate::study::best;

#[derive(Serialize)]
pub struct StudyReport<'a> {
    pub study: &'a StudyRecord,
    pub trials: &'a [TrialRecord],
    /// Population history (population-based training), by step and member.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub members: &'a [MemberRecord],
    pub best: Option<&'a TrialRecord>,
    pub complete: usize,
    pub failed: usize,
    pub pruned: usize,
    pub paused: usize,
    pub running: usize,
}

pub fn study_report<'a>(study: &'a StudyRecord, trials: &'a [TrialRecord], members: &'a [MemberRecord]) -> StudyReport<'a> {
    use archsearch_core::TrialState::*;
    let count = |s| trials.iter().filter(|t| t.state == s).count();
    StudyReport {
        study,
        trials,
        members,
        best: best(trials, study.direction),
        complete: count(Complete),
        failed: count(Fail),
        pruned: count(Pruned),
        paused: count(Paused),
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
        "study `{}`: {} trials ({} complete, {} failed, {} pruned, {} paused, {} running)",
        r.study.name,
        r.trials.len(),
        r.complete,
        r.failed,
        r.pruned,
        r.paused,
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

/// The trial table followed by the summary (or, for population-based
/// training, the population history).
pub fn table(r: &StudyReport<'_>) -> String {
    let mut s = String::new();
    if !r.members.is_empty() {
        let _ = writeln!(s, "study `{}`: population history", r.study.name);
        let _ = writeln!(
            s,
            "{:>4} {:>6} {:>9} {:>9}  {:<10} {:<24} lineage (position: parent/origin)",
            "step", "member", "fitness", "lr", "event", "choices"
        );
        for m in r.members {
            let rec = &m.record;
            let lineage = rec["lineage"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .enumerate()
                        .map(|(i, x)| format!("{i}:{}/{}", x["parent"], x["origin"].as_str().unwrap_or("?")))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "{:>4} {:>6} {:>9} {:>9.2e}  {:<10} {:<24} {}",
                m.step,
                m.member,
                rec["fitness"].as_f64().map(|f| format!("{f:.2}")).unwrap_or_else(|| "-".into()),
                rec["lr"].as_f64().unwrap_or(f64::NAN),
                rec["event"].as_str().unwrap_or(""),
                rec["choices"].to_string(),
                lineage
            );
        }
        return s;
    }
    // A trial evaluated to a budget shows it: `PRUNED@12` stopped at step 12.
    let _ = writeln!(s, "{:>6}  {:<13}  {:>10}  {:<40}  metrics / error", "trial", "state@step", "value", "architecture");
    for t in r.trials {
        let value = t.value.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        let extra = t.error.clone().unwrap_or_else(|| fmt_metrics(t));
        let state = match t.step {
            Some(step) => format!("{}@{step}", t.state.as_str()),
            None => t.state.as_str().to_string(),
        };
        let _ = writeln!(s, "{:>6}  {:<13}  {:>10}  {:<40}  {}", t.number, state, value, t.arch, extra);
    }
    s.push('\n');
    s.push_str(&summary(r));
    s
}
