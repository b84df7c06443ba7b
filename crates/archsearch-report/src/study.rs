//! The sections of a study report, each built only when the study has the
//! data for it: the summary (always), search progress (trials),
//! multi-fidelity (intermediate values), population-based training (member
//! records) and proxy checks (the `proxy_check` attribute).
//!
//! Tables hold only what a deterministic study reproduces: trial numbers,
//! values, states, architectures. Wall-clock times appear only in plots.

use std::collections::BTreeMap;

use archsearch_core::{Direction, TrialState};
use archsearch_store::TrialRecord;
use serde::Deserialize;

use crate::data::{self, StudyData};
use crate::plots::{self, Axes, Mark, Series};
use crate::{num, opt_num, Plot, Section, Table};

/// Section titles (tests and callers may look sections up by them).
pub(crate) const SUMMARY: &str = "Summary";
pub(crate) const PROGRESS: &str = "Search progress";
pub(crate) const FIDELITY: &str = "Multi-fidelity";
pub(crate) const POPULATION: &str = "Population-based training";
pub(crate) const PROXY: &str = "Proxy checks";

/// The share of COMPLETE trials whose options the frequency heat map counts.
const TOP_FRACTION: f64 = 0.1;

/// Every section that applies to the study's data, summary first.
pub fn study_sections(d: &StudyData) -> Vec<Section> {
    let mut out = vec![summary(d)];
    if !d.trials.is_empty() {
        out.push(progress(d));
    }
    if d.trials.iter().any(|t| !t.intermediate.is_empty()) {
        out.push(fidelity(d));
    }
    if !d.members.is_empty() {
        out.push(population(d));
    }
    if let Some(s) = proxy(d) {
        out.push(s);
    }
    out
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Maximize => "maximize",
        Direction::Minimize => "minimize",
    }
}

const STATES: [TrialState; 5] = [TrialState::Complete, TrialState::Pruned, TrialState::Fail, TrialState::Paused, TrialState::Running];

fn state_color(s: TrialState) -> plotters::style::RGBColor {
    match s {
        TrialState::Complete => plots::C_BLUE,
        TrialState::Pruned => plots::C_ORANGE,
        TrialState::Fail => plots::C_RED,
        TrialState::Paused => plots::C_GREY,
        TrialState::Running => plots::C_GREEN,
    }
}

fn plot(title: String, svg: String) -> Plot {
    Plot { title, svg }
}

fn strings<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// The best COMPLETE trial for the study's direction (the first of equals).
fn best_trial(d: &StudyData) -> Option<(&TrialRecord, f64)> {
    let mut best: Option<(&TrialRecord, f64)> = None;
    for t in &d.trials {
        if let Some(v) = data::complete_value(t) {
            if best.is_none_or(|(_, b)| d.study.direction.better(v, b)) {
                best = Some((t, v));
            }
        }
    }
    best
}

/// Study, direction, seed, what it runs, and its counts.
fn summary(d: &StudyData) -> Section {
    let s = &d.study;
    let mut rows = vec![
        vec!["study".into(), s.name.clone()],
        vec!["direction".into(), direction_name(s.direction).into()],
        vec!["seed".into(), s.seed.to_string()],
    ];
    for table in ["task", "strategy"] {
        if let Some(kind) = data::config_kind(&s.config, table) {
            rows.push(vec![table.into(), kind]);
        }
    }
    if !d.trials.is_empty() || d.members.is_empty() {
        let by_state: Vec<String> = STATES
            .iter()
            .map(|&st| (st, d.trials.iter().filter(|t| t.state == st).count()))
            .filter(|&(_, n)| n > 0)
            .map(|(st, n)| format!("{n} {}", st.as_str()))
            .collect();
        let detail = if by_state.is_empty() { String::new() } else { format!(" ({})", by_state.join(", ")) };
        rows.push(vec!["trials".into(), format!("{}{detail}", d.trials.len())]);
    }
    if let Some((t, v)) = best_trial(d) {
        rows.push(vec!["best value".into(), num(v)]);
        rows.push(vec!["best trial".into(), t.number.to_string()]);
        rows.push(vec!["best architecture".into(), t.arch.clone()]);
    }
    if !d.members.is_empty() {
        let lives = data::member_lives(&d.members);
        let steps = d.members.iter().map(|m| m.step).max().map_or(0, |s| s + 1);
        rows.push(vec!["PBT members".into(), format!("{} over {steps} steps", lives.len())]);
        let best = lives
            .iter()
            .filter_map(|m| m.final_fitness().map(|f| (m, f)))
            .fold(None, |b: Option<(&data::MemberLife, f64)>, (m, f)| if b.is_none_or(|(_, bf)| f > bf) { Some((m, f)) } else { b });
        if let Some((m, f)) = best {
            rows.push(vec!["best member".into(), format!("{} (final fitness {}, {})", m.id, num(f), m.arch)]);
        }
    }
    Section {
        title: SUMMARY.into(),
        plots: vec![],
        tables: vec![Table { title: "Study".into(), columns: strings(["field", "value"]), rows }],
    }
}

/// Best-so-far curves, every trial's value, state counts and the option
/// frequencies of the top trials.
fn progress(d: &StudyData) -> Section {
    let dir = d.study.direction;
    let low = dir == Direction::Minimize;
    let mut trials: Vec<&TrialRecord> = d.trials.iter().collect();
    trials.sort_by_key(|t| t.number);
    let mut plots = Vec::new();

    let by_trial = data::best_so_far(dir, trials.iter().filter_map(|t| Some((t.number as f64, data::complete_value(t)?))));
    if !by_trial.is_empty() {
        let title = "Best so far by trial".to_string();
        let axes = Axes { title: &title, x: "trial", y: "best value", legend_low: false };
        plots.push(plot(title.clone(), plots::xy_chart(&axes, &[Series::new(None, plots::C_BLUE, Mark::Step, by_trial)])));
    }
    let finished = data::by_finish(&d.trials);
    let t0 = d.study.created_at;
    let by_time = data::best_so_far(
        dir,
        finished.iter().filter_map(|t| Some((t.finished_at? - t0, data::complete_value(t)?))).filter(|(x, _)| x.is_finite()),
    );
    if !by_time.is_empty() {
        let title = "Best so far by wall time".to_string();
        let axes = Axes { title: &title, x: "seconds since the study was created", y: "best value", legend_low: false };
        plots.push(plot(title.clone(), plots::xy_chart(&axes, &[Series::new(None, plots::C_GREEN, Mark::Step, by_time)])));
    }
    let mut spent = 0.0;
    let mut cost_points = Vec::new();
    for t in &finished {
        if t.cost.is_finite() {
            spent += t.cost;
        }
        if let Some(v) = data::complete_value(t) {
            cost_points.push((spent, v));
        }
    }
    let by_cost = data::best_so_far(dir, cost_points);
    if spent > 0.0 && !by_cost.is_empty() {
        let title = "Best so far by cumulative cost".to_string();
        let axes = Axes { title: &title, x: "cumulative cost (s)", y: "best value", legend_low: false };
        plots.push(plot(title.clone(), plots::xy_chart(&axes, &[Series::new(None, plots::C_PURPLE, Mark::Step, by_cost)])));
    }

    // Every trial's value, by state; failed trials along the bottom.
    let mut series = Vec::new();
    for st in STATES {
        let of_state: Vec<&&TrialRecord> = trials.iter().filter(|t| t.state == st).collect();
        if of_state.is_empty() {
            continue;
        }
        if st == TrialState::Fail {
            let pts = of_state.iter().map(|t| (t.number as f64, 0.0)).collect();
            series.push(Series::new(Some("FAIL (no value)".into()), state_color(st), Mark::FloorCrosses, pts));
        } else {
            let pts: Vec<(f64, f64)> =
                of_state.iter().filter_map(|t| Some((t.number as f64, t.value.filter(|v| v.is_finite())?))).collect();
            if !pts.is_empty() {
                series.push(Series::new(Some(st.as_str().into()), state_color(st), Mark::Dots, pts));
            }
        }
    }
    if !series.is_empty() {
        let title = "Value of every trial".to_string();
        let axes = Axes { title: &title, x: "trial", y: "value", legend_low: !low };
        plots.push(plot(title.clone(), plots::xy_chart(&axes, &series)));
    }

    // Tables.
    let mut best: Option<f64> = None;
    let rows = trials
        .iter()
        .map(|t| {
            if let Some(v) = data::complete_value(t) {
                if best.is_none_or(|b| dir.better(v, b)) {
                    best = Some(v);
                }
            }
            vec![t.number.to_string(), t.state.as_str().into(), opt_num(t.value), opt_num(best)]
        })
        .collect();
    let mut tables =
        vec![Table { title: "Best so far by trial".into(), columns: strings(["trial", "state", "value", "best so far"]), rows }];
    tables.push(Table {
        title: "Trial states".into(),
        columns: strings(["state", "trials"]),
        rows: STATES.iter().map(|&st| vec![st.as_str().into(), d.trials.iter().filter(|t| t.state == st).count().to_string()]).collect(),
    });
    if let Some((p, t)) = top_options(d) {
        plots.push(p);
        tables.push(t);
    }
    Section { title: PROGRESS.into(), plots, tables }
}

/// The heat map and table of option frequencies among the top trials.
fn top_options(d: &StudyData) -> Option<(Plot, Table)> {
    let space = d.space.as_ref()?;
    let f = data::top_frequencies(space, &d.trials, d.study.direction, TOP_FRACTION)?;
    let decisions = space.decisions();
    let same_options = decisions.windows(2).all(|w| w[0].options == w[1].options);
    let kmax = decisions.iter().map(|d| d.options.len()).max().unwrap_or(0);
    let columns: Vec<String> = if same_options { decisions[0].options.clone() } else { (0..kmax).map(|i| i.to_string()).collect() };
    let uniform_k = decisions.iter().map(|d| d.options.len()).min().filter(|&k| decisions.iter().all(|d| d.options.len() == k));
    let title = format!("Options in the top {} of {} complete trials (uniform: 1/K)", f.top, f.complete);
    let rows: Vec<String> = decisions.iter().map(|d| d.name.clone()).collect();
    let svg = plots::heat_map(&title, &rows, &columns, &f.freq, uniform_k.map(|k| 1.0 / k as f64));
    let mut table_rows = Vec::new();
    for (pos, dec) in decisions.iter().enumerate() {
        let k = dec.options.len() as f64;
        for (i, name) in dec.options.iter().enumerate() {
            let freq = f.freq[pos][i];
            table_rows.push(vec![dec.name.clone(), i.to_string(), name.clone(), num(freq), num(1.0 / k), num(freq * k)]);
        }
    }
    let table = Table {
        title: format!("Option frequencies in the top {} of {} complete trials", f.top, f.complete),
        columns: strings(["position", "index", "option", "top frequency", "space share (1/K)", "enrichment"]),
        rows: table_rows,
    };
    Some((plot(title, svg), table))
}

/// Curves drawn at most in the intermediate-values plot.
const MAX_CURVES: usize = 500;

/// Intermediate values by step, with where each trial stopped.
fn fidelity(d: &StudyData) -> Section {
    let mut trials: Vec<&TrialRecord> = d.trials.iter().filter(|t| !t.intermediate.is_empty()).collect();
    trials.sort_by_key(|t| t.number);
    let mut series = Vec::new();
    // At most MAX_CURVES curves (evenly spaced by trial number); every
    // trial's end marker is drawn.
    let stride = trials.len().div_ceil(MAX_CURVES).max(1);
    for t in trials.iter().step_by(stride) {
        let pts = t.intermediate.iter().map(|&(s, v)| (s as f64, v)).collect();
        series.push(Series::new(None, plots::lighten(state_color(t.state), 0.45), Mark::Line, pts));
    }
    // End markers, one legend entry per state.
    for st in STATES {
        let ends: Vec<(f64, f64)> = trials
            .iter()
            .filter(|t| t.state == st)
            .filter_map(|t| t.intermediate.iter().rev().find(|(_, v)| v.is_finite()).map(|&(s, v)| (s as f64, v)))
            .collect();
        if ends.is_empty() {
            continue;
        }
        let (label, mark) = match st {
            TrialState::Pruned => ("PRUNED (stopped here)", Mark::Crosses),
            TrialState::Fail => ("FAIL (last value)", Mark::Crosses),
            TrialState::Complete => ("COMPLETE", Mark::Dots),
            TrialState::Paused => ("PAUSED", Mark::Dots),
            TrialState::Running => ("RUNNING", Mark::Dots),
        };
        series.push(Series::new(Some(label.into()), state_color(st), mark, ends));
    }
    let title = match stride {
        1 => "Intermediate values by step".to_string(),
        _ => format!("Intermediate values by step (curves of every {stride}th of {} trials)", trials.len()),
    };
    let axes = Axes { title: &title, x: "step (budget)", y: "intermediate value", legend_low: d.study.direction == Direction::Maximize };
    let svg = plots::xy_chart(&axes, &series);
    let rows = trials
        .iter()
        .map(|t| {
            let (s, v) = *t.intermediate.last().expect("non-empty");
            vec![t.number.to_string(), t.state.as_str().into(), s.to_string(), num(v), t.intermediate.len().to_string()]
        })
        .collect();
    Section {
        title: FIDELITY.into(),
        plots: vec![plot(title, svg)],
        tables: vec![Table {
            title: "Last intermediate value per trial".into(),
            columns: strings(["trial", "state", "last step", "last value", "values reported"]),
            rows,
        }],
    }
}

/// PBT: member fitness over steps, the lineage graph, members and edges.
fn population(d: &StudyData) -> Section {
    let lives = data::member_lives(&d.members);
    let edges = data::lineage_edges(&lives);
    let legend = lives.len() <= 10;
    let series: Vec<Series> = lives
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let pts = m.fitness.iter().filter_map(|&(s, f)| Some((s as f64, f?))).collect();
            Series::new(legend.then(|| format!("member {}", m.id)), plots::color(i), Mark::LineDots, pts)
        })
        .collect();
    let title = "Member fitness by step".to_string();
    let axes = Axes { title: &title, x: "step", y: "fitness", legend_low: true };
    let fitness_svg = plots::xy_chart(&axes, &series);
    let lineage_title = "Lineage (orange: positions taken from the donor)".to_string();
    let lineage_svg = plots::lineage(&lineage_title, &lives, &edges);
    let join = |ids: &[u64]| if ids.is_empty() { "-".to_string() } else { ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ") };
    let members = lives
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.born_at_step.to_string(),
                m.event.clone(),
                join(&m.parents),
                m.last_step().to_string(),
                opt_num(m.final_fitness()),
                m.arch.clone(),
                m.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let edge_rows = edges
        .iter()
        .map(|e| {
            let positions =
                if e.mixed.is_empty() { "-".into() } else { e.mixed.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>().join(",") };
            let mut origins: Vec<&str> = e.mixed.iter().map(|(_, o)| o.as_str()).collect();
            origins.dedup();
            vec![
                e.child.to_string(),
                e.parent.to_string(),
                e.role.into(),
                positions,
                if origins.is_empty() { "-".into() } else { origins.join(", ") },
            ]
        })
        .collect();
    Section {
        title: POPULATION.into(),
        plots: vec![plot(title, fitness_svg), plot(lineage_title, lineage_svg)],
        tables: vec![
            Table {
                title: "Members".into(),
                columns: strings(["member", "born at step", "event", "parents", "last step", "final fitness", "architecture", "error"]),
                rows: members,
            },
            Table { title: "Lineage edges".into(), columns: strings(["child", "parent", "role", "positions", "origins"]), rows: edge_rows },
        ],
    }
}

/// One proxy check as `proxy.rs` stores it (NaN is stored as `null`).
#[derive(Debug, Deserialize)]
struct ProxyRow {
    proxy: String,
    #[serde(default)]
    target: String,
    architectures: Option<u64>,
    kendall_tau: Option<f64>,
    spearman_rho: Option<f64>,
    topk_overlap: Option<f64>,
    k: Option<u64>,
    regret: Option<f64>,
    cost_ratio: Option<f64>,
}

/// The proxy checks table and, when `proxy_pairs` is stored, one scatter per proxy.
fn proxy(d: &StudyData) -> Option<Section> {
    let raw = d.attrs.get("proxy_check")?;
    let rows: Vec<ProxyRow> = match serde_json::from_value(raw.clone()) {
        Ok(rows) => rows,
        Err(e) => {
            let table = Table {
                title: "Proxy checks".into(),
                columns: strings(["error"]),
                rows: vec![vec![format!("unreadable proxy_check: {e}")]],
            };
            return Some(Section { title: PROXY.into(), plots: vec![], tables: vec![table] });
        }
    };
    let count = |v: Option<u64>| v.map_or("-".into(), |n| n.to_string());
    let table_rows = rows
        .iter()
        .map(|r| {
            vec![
                r.proxy.clone(),
                r.target.clone(),
                count(r.architectures),
                opt_num(r.kendall_tau),
                opt_num(r.spearman_rho),
                opt_num(r.topk_overlap),
                count(r.k),
                opt_num(r.regret),
                opt_num(r.cost_ratio),
            ]
        })
        .collect();
    let mut plots = Vec::new();
    if let Some(serde_json::Value::Object(pairs)) = d.attrs.get("proxy_pairs") {
        let by_name: BTreeMap<&str, &ProxyRow> = rows.iter().map(|r| (r.proxy.as_str(), r)).collect();
        for (name, list) in pairs {
            let pts: Vec<(f64, f64)> = list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                .filter(|(a, b)| a.is_finite() && b.is_finite())
                .collect();
            let row = by_name.get(name.as_str());
            let target = row.map(|r| r.target.as_str()).filter(|t| !t.is_empty()).unwrap_or("target");
            let stats = match row {
                Some(r) => format!(" (τ = {}, ρ = {})", opt_num(r.kendall_tau), opt_num(r.spearman_rho)),
                None => String::new(),
            };
            let title = format!("{name} vs {target}{stats}");
            let x = format!("proxy: {name}");
            let y = format!("target: {target}");
            let axes = Axes { title: &title, x: &x, y: &y, legend_low: false };
            plots.push(plot(title.clone(), plots::xy_chart(&axes, &[Series::new(None, plots::C_BLUE, Mark::Dots, pts)])));
        }
    }
    let table = Table {
        title: "Proxy checks".into(),
        columns: strings(["proxy", "target", "architectures", "Kendall τ", "Spearman ρ", "top-k overlap", "k", "regret", "cost ratio"]),
        rows: table_rows,
    };
    Some(Section { title: PROXY.into(), plots, tables: vec![table] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests::{study, trial};
    use crate::{page, tables_text};
    use archsearch_store::MemberRecord;

    const SEQ: &str = "[study]\nname = \"s\"\n[space]\nkind = \"sequence\"\nlength = 2\nnum_options = 3\n[task]\nkind = \"table\"\n[strategy]\nkind = \"random\"\n";

    fn data(direction: Direction, trials: Vec<TrialRecord>) -> StudyData {
        let st = study(direction, SEQ);
        let space = data::space_of_config(&st.name, &st.config).unwrap();
        StudyData { study: st, trials, members: vec![], attrs: BTreeMap::new(), space }
    }

    fn titles(s: &[Section]) -> Vec<&str> {
        s.iter().map(|s| s.title.as_str()).collect()
    }

    fn table<'a>(s: &'a [Section], section: &str, title: &str) -> &'a Table {
        let sec = s.iter().find(|s| s.title == section).unwrap_or_else(|| panic!("no section {section}"));
        sec.tables.iter().find(|t| t.title.starts_with(title)).unwrap_or_else(|| panic!("no table {title}"))
    }

    fn all_svg(s: &[Section]) {
        for p in s.iter().flat_map(|s| &s.plots) {
            assert!(p.svg.starts_with("<svg") && p.svg.trim_end().ends_with("</svg>"), "{}", p.title);
            assert!(!p.svg.contains("plot failed"), "{}: {}", p.title, p.svg);
        }
    }

    fn pbt_members() -> Vec<MemberRecord> {
        let rec = |step: u64, member: u64, fitness: f64, born: u64, parents: Vec<u64>, lineage: serde_json::Value| MemberRecord {
            step,
            member,
            record: serde_json::json!({"step": step, "member": member, "arch": "op0,op1", "choices": [0, 1], "lr": 0.01, "fitness": fitness,
                "error": null, "event": if parents.is_empty() {"initial"} else {"child"}, "born_at_step": born, "parents": parents, "lineage": lineage}),
        };
        vec![
            rec(0, 0, 0.5, 0, vec![], serde_json::json!([])),
            rec(0, 1, 0.7, 0, vec![], serde_json::json!([])),
            rec(1, 1, 0.8, 0, vec![], serde_json::json!([])),
            rec(
                1,
                2,
                0.75,
                1,
                vec![1, 0],
                serde_json::json!([{"parent": 1, "origin": "copied"}, {"parent": 0, "origin": "shrink_perturbed"}]),
            ),
        ]
    }

    #[test]
    fn an_empty_study_has_only_its_summary() {
        let d = data(Direction::Maximize, vec![]);
        let s = study_sections(&d);
        assert_eq!(titles(&s), vec![SUMMARY]);
        let html = page("empty", &s, Some("/fragment"));
        assert!(html.contains("<h2>Summary</h2>"));
        // No space at all, and a config that names none, render too.
        let d = StudyData { space: None, ..data(Direction::Minimize, vec![trial(0, TrialState::Complete, &[0, 0], Some(1.0))]) };
        all_svg(&study_sections(&d));
    }

    #[test]
    fn each_section_appears_for_its_data_only() {
        let mut trials: Vec<TrialRecord> = (0..5).map(|i| trial(i, TrialState::Complete, &[0, 1], Some(i as f64))).collect();
        let s = study_sections(&data(Direction::Maximize, trials.clone()));
        assert_eq!(titles(&s), vec![SUMMARY, PROGRESS]);
        assert_eq!(s[1].plots.len(), 5, "three best-so-far plots, every value, the heat map");
        all_svg(&s);

        trials[1].intermediate = vec![(1, 0.5), (2, 0.7)];
        trials[2].intermediate = vec![(1, 0.2)];
        trials[2].state = TrialState::Pruned;
        let mut d = data(Direction::Maximize, trials);
        assert_eq!(titles(&study_sections(&d)), vec![SUMMARY, PROGRESS, FIDELITY]);
        let s = study_sections(&d);
        let t = table(&s, FIDELITY, "Last intermediate");
        assert_eq!(t.rows, vec![strings(["1", "COMPLETE", "2", "0.7", "2"]), strings(["2", "PRUNED", "1", "0.2", "1"])]);
        all_svg(&s);

        d.members = pbt_members();
        d.attrs.insert(
            "proxy_check".into(),
            serde_json::json!([{"proxy": "p12", "target": "t200", "architectures": 50, "kendall_tau": 0.5,
            "spearman_rho": 0.7, "topk_overlap": 0.4, "k": 5, "regret": 0.1, "cost_ratio": null}]),
        );
        let s = study_sections(&d);
        assert_eq!(titles(&s), vec![SUMMARY, PROGRESS, FIDELITY, POPULATION, PROXY]);
        assert!(s[4].plots.is_empty(), "no pairs, no scatter");
        assert_eq!(table(&s, PROXY, "Proxy").rows[0], strings(["p12", "t200", "50", "0.5", "0.7", "0.4", "5", "0.1", "-"]));
        d.attrs.insert("proxy_pairs".into(), serde_json::json!({"p12": [[1.0, 2.0], [2.0, 3.5], [null, 1.0]]}));
        let s = study_sections(&d);
        assert_eq!(s[4].plots.len(), 1);
        assert_eq!(s[4].plots[0].title, "p12 vs t200 (τ = 0.5, ρ = 0.7)");
        all_svg(&s);

        // A PBT study: no trials, members only.
        let d = StudyData { members: pbt_members(), ..data(Direction::Maximize, vec![]) };
        let s = study_sections(&d);
        assert_eq!(titles(&s), vec![SUMMARY, POPULATION]);
        assert_eq!(s[1].plots.len(), 2);
        let edges = table(&s, POPULATION, "Lineage edges");
        assert_eq!(edges.rows, vec![strings(["2", "1", "fitter", "-", "-"]), strings(["2", "0", "donor", "1", "shrink_perturbed"])]);
        let members = table(&s, POPULATION, "Members");
        assert_eq!(members.rows[2][..6], strings(["2", "1", "child", "1, 0", "1", "0.75"]));
        assert!(s[1].plots[1].svg.contains("pos 1"), "the donor edge names the donated position");
        assert!(table(&s, SUMMARY, "Study").rows.iter().any(|r| r[0] == "best member" && r[1].starts_with("1 (final fitness 0.8")));
        all_svg(&s);
    }

    #[test]
    fn a_minimising_study_tracks_the_running_minimum() {
        let values = [5.0, 3.0, 4.0, 1.0, 2.0];
        let mut trials: Vec<TrialRecord> =
            values.iter().enumerate().map(|(i, &v)| trial(i as u64, TrialState::Complete, &[0, 0], Some(v))).collect();
        trials.push(trial(5, TrialState::Fail, &[1, 1], None));
        trials.push(trial(6, TrialState::Complete, &[1, 1], Some(f64::NAN)));
        let s = study_sections(&data(Direction::Minimize, trials));
        let best: Vec<&str> = table(&s, PROGRESS, "Best so far").rows.iter().map(|r| r[3].as_str()).collect();
        assert_eq!(best, vec!["5", "3", "3", "1", "1", "1", "1"]);
        let study = table(&s, SUMMARY, "Study");
        assert!(study.rows.contains(&strings(["best value", "1"])) && study.rows.contains(&strings(["best trial", "3"])));
        assert!(study.rows.contains(&strings(["trials", "7 (6 COMPLETE, 1 FAIL)"])));
        all_svg(&s);
    }

    /// Ten trials on 2 × 3 options: the top 10 % is trial 9 (`op0,op1` as
    /// written by `trial`: choices [0, 1]).
    #[test]
    fn the_top_ten_percent_heat_map_counts_the_best_trials() {
        let trials: Vec<TrialRecord> =
            (0..10).map(|i| trial(i, TrialState::Complete, &[(i % 3) as usize, if i == 9 { 1 } else { 2 }], Some(i as f64))).collect();
        let s = study_sections(&data(Direction::Maximize, trials));
        let t = table(&s, PROGRESS, "Option frequencies in the top 1 of 10");
        assert_eq!(t.rows.len(), 6);
        assert_eq!(t.rows[0], strings(["pos0", "0", "op0", "1", "0.333333", "3"]));
        assert_eq!(t.rows[4], strings(["pos1", "1", "op1", "1", "0.333333", "3"]));
        assert_eq!(t.rows[5], strings(["pos1", "2", "op2", "0", "0.333333", "0"]));
        let heat = s[1].plots.iter().find(|p| p.title.starts_with("Options in the top 1 of 10")).unwrap();
        assert!(heat.svg.contains("1/K=0.33") && heat.svg.contains("op2"));
    }

    #[test]
    fn tables_hold_no_timestamps_and_html_escapes_names() {
        let mut trials: Vec<TrialRecord> = (0..4).map(|i| trial(i, TrialState::Complete, &[0, 1], Some(0.25 * i as f64))).collect();
        for t in &mut trials {
            t.started_at = 1_700_000_000.123;
            t.finished_at = Some(1_700_000_042.987);
            t.heartbeat = 1_700_000_041.5;
            t.intermediate = vec![(1, 0.1)];
        }
        let mut d = data(Direction::Maximize, trials);
        d.study.created_at = 1_699_999_999.5;
        d.study.name = "<script>alert(1)</script>".into();
        d.members = pbt_members();
        let s = study_sections(&d);
        let text = tables_text(&s);
        for stamp in ["1700000", "1699999", "1.7e9", "42.987", "uid", "0.1.0"] {
            assert!(!text.contains(stamp), "{stamp} in\n{text}");
        }
        assert_eq!(text, tables_text(&study_sections(&d)), "deterministic");
        let html = page(&d.study.name, &s, None);
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }
}
