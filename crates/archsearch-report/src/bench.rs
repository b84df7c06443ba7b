//! The section of a bench report: replay results (one JSON object per
//! strategy and budget, as `archsearch bench` writes them) side by side.
//!
//! Each result carries the mean and std over seeds of the picked
//! architectures' report value and, optionally, a samples-to-quality `curve`
//! of `[evaluations, mean, std]` triples: the report value of each run's
//! pick after that many evaluations. Wall seconds are left out of the
//! tables (they differ from run to run).

use serde::Deserialize;

use crate::plots::{self, Axes, Mark, Series};
use crate::{num, opt_num, Plot, ReportError, Section, Table};

/// The section title of a bench report.
pub(crate) const BENCH: &str = "Bench";

/// `(evaluations, mean, std)` of the report value of the pick; `null` where NaN.
type CurvePoint = (Option<f64>, Option<f64>, Option<f64>);

/// One replay result; JSON has no NaN, so missing statistics are `null`.
#[derive(Debug, Deserialize)]
struct BenchRow {
    strategy: String,
    budget: Option<u64>,
    cost_budget: Option<f64>,
    #[serde(default)]
    seeds: u64,
    mean: Option<f64>,
    std: Option<f64>,
    search_mean: Option<f64>,
    distinct: Option<f64>,
    evaluations: Option<f64>,
    cost: Option<f64>,
    #[serde(default)]
    curve: Option<Vec<CurvePoint>>,
}

impl BenchRow {
    fn budget_text(&self) -> String {
        match (self.budget, self.cost_budget) {
            (Some(b), Some(c)) => format!("{b} evals, cost {}", num(c)),
            (Some(b), None) => format!("{b} evals"),
            (None, Some(c)) => format!("cost {}", num(c)),
            (None, None) => "-".into(),
        }
    }
}

/// Names for the results: the strategy, with its budget where a strategy
/// appears more than once (and a counter if that still repeats).
fn labels(rows: &[BenchRow]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            if rows.iter().filter(|o| o.strategy == r.strategy).count() > 1 {
                format!("{} ({})", r.strategy, r.budget_text())
            } else {
                r.strategy.clone()
            }
        })
        .collect();
    for i in 0..out.len() {
        let n = out[..i].iter().filter(|o| **o == out[i]).count();
        if n > 0 {
            out[i] = format!("{} #{}", out[i], n + 1);
        }
    }
    out
}

/// The bench section: strategies side by side (mean ± std), the
/// samples-to-quality curves of the results that have one, and their
/// tables. No results, no section; a result that is not a replay result is
/// an error.
pub fn bench_sections(results: &[serde_json::Value]) -> Result<Vec<Section>, ReportError> {
    let rows: Vec<BenchRow> = results
        .iter()
        .enumerate()
        .map(|(index, v)| serde_json::from_value(v.clone()).map_err(|source| ReportError::Bench { index, source }))
        .collect::<Result<_, _>>()?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let names = labels(&rows);
    let mut plots = Vec::new();
    let stats: Vec<(f64, f64)> = rows.iter().map(|r| (r.mean.unwrap_or(f64::NAN), r.std.unwrap_or(0.0))).collect();
    let title = "Report value of the picked architecture (mean ± std over seeds)".to_string();
    plots.push(Plot { title: title.clone(), svg: plots::error_bars(&title, "report value", &names, &stats) });

    let mut series = Vec::new();
    let mut curve_rows = Vec::new();
    for (i, (r, name)) in rows.iter().zip(&names).enumerate() {
        let Some(curve) = &r.curve else { continue };
        let c = plots::color(i);
        let pts: Vec<(f64, f64, Option<f64>)> = curve.iter().filter_map(|&(e, m, s)| Some((e?, m?, s))).collect();
        let band: Vec<(f64, f64, f64)> = pts.iter().filter_map(|&(e, m, s)| Some((e, m, s.filter(|s| s.is_finite())?))).collect();
        if band.len() >= 2 {
            let polygon = band.iter().map(|&(e, m, s)| (e, m + s)).chain(band.iter().rev().map(|&(e, m, s)| (e, m - s))).collect();
            series.push(Series::new(None, c, Mark::Band, polygon));
        }
        series.push(Series::new(Some(name.clone()), c, Mark::Line, pts.iter().map(|&(e, m, _)| (e, m)).collect()));
        for &(e, m, s) in curve {
            curve_rows.push(vec![name.clone(), opt_num(e), opt_num(m), opt_num(s)]);
        }
    }
    if !series.is_empty() {
        let title = "Samples to quality (report value of the pick so far, mean ± std)".to_string();
        let axes = Axes { title: &title, x: "evaluations", y: "report value of the pick", legend_low: true };
        plots.push(Plot { title: title.clone(), svg: plots::xy_chart(&axes, &series) });
    }

    let summary = rows
        .iter()
        .zip(&names)
        .map(|(r, name)| {
            vec![
                name.clone(),
                r.budget_text(),
                r.seeds.to_string(),
                opt_num(r.mean),
                opt_num(r.std),
                opt_num(r.search_mean),
                opt_num(r.distinct),
                opt_num(r.evaluations),
                opt_num(r.cost),
            ]
        })
        .collect();
    let mut tables = vec![Table {
        title: "Strategies".into(),
        columns: ["strategy", "budget", "seeds", "mean", "std", "search mean", "distinct", "evaluations", "cost"]
            .map(String::from)
            .to_vec(),
        rows: summary,
    }];
    if !curve_rows.is_empty() {
        tables.push(Table {
            title: "Samples-to-quality curves".into(),
            columns: ["strategy", "evaluations", "mean of pick", "std"].map(String::from).to_vec(),
            rows: curve_rows,
        });
    }
    Ok(vec![Section { title: BENCH.into(), plots, tables }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{page, tables_text};

    fn result(strategy: &str, curve: Option<serde_json::Value>) -> serde_json::Value {
        let mut v = serde_json::json!({"strategy": strategy, "budget": 100, "cost_budget": null, "seeds": 10, "mean": 93.1, "std": 0.4,
            "search_mean": 91.2, "distinct": 98.5, "evaluations": 100.0, "cost": 0.0, "wall_seconds": 1.234});
        if let Some(c) = curve {
            v["curve"] = c;
        }
        v
    }

    #[test]
    fn bench_sections_with_and_without_curves() {
        let lines =
            "{\"strategy\":\"random\",\"budget\":100,\"cost_budget\":null,\"seeds\":10,\"mean\":92.5,\"std\":0.8,\"search_mean\":90.1,\
                     \"distinct\":100.0,\"evaluations\":100.0,\"cost\":0.0,\"wall_seconds\":0.5}\n"
                .to_string()
                + &result("evolution", Some(serde_json::json!([[1, 80.0, 5.0], [10, 88.5, 2.0], [100, 91.2, 0.5]]))).to_string();
        let results: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let s = bench_sections(&results).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].plots.len(), 2);
        for p in &s[0].plots {
            assert!(p.svg.starts_with("<svg") && !p.svg.contains("plot failed"), "{}", p.title);
        }
        assert!(s[0].plots[1].svg.contains("evolution"));
        assert_eq!(s[0].tables.len(), 2);
        assert_eq!(
            s[0].tables[0].rows[0],
            ["random", "100 evals", "10", "92.5", "0.8", "90.1", "100", "100", "0"].map(String::from).to_vec()
        );
        assert_eq!(s[0].tables[1].rows.len(), 3);
        let text = tables_text(&s);
        assert!(!text.contains("1.234") && !text.contains("wall"), "{text}");
        assert!(page("bench", &s, None).contains("<h2>Bench</h2>"));

        // Without any curve: the mean ± std plot and one table only.
        let s = bench_sections(&results[..1]).unwrap();
        assert_eq!((s[0].plots.len(), s[0].tables.len()), (1, 1));
        assert!(bench_sections(&[]).unwrap().is_empty());
        assert!(matches!(bench_sections(&[serde_json::json!({"mean": 1})]), Err(ReportError::Bench { index: 0, .. })));
    }

    #[test]
    fn repeated_strategies_are_told_apart_by_budget() {
        let mut a = result("asha", None);
        a["budget"] = serde_json::Value::Null;
        a["cost_budget"] = 3600.0.into();
        let results = [result("asha", None), a, result("asha", None), result("random", None)];
        let rows: Vec<BenchRow> = results.iter().map(|v| serde_json::from_value(v.clone()).unwrap()).collect();
        assert_eq!(labels(&rows), vec!["asha (100 evals)", "asha (cost 3600)", "asha (100 evals) #2", "random"]);
        // NaN statistics arrive as null and still draw.
        let mut nan = result("x", Some(serde_json::json!([[1, null, null], [2, 1.0, null]])));
        nan["mean"] = serde_json::Value::Null;
        let s = bench_sections(&[nan]).unwrap();
        assert!(s[0].plots.iter().all(|p| !p.svg.contains("plot failed")));
    }
}
