//! What a report reads, and the numbers it derives from it.
//!
//! [`StudyData`] is a study as the store holds it (trials, PBT member
//! records, attributes) with its search space rebuilt from the stored config.
//! The functions below turn it into the series and counts the sections plot
//! and tabulate: best-so-far curves, the option frequencies of the top
//! trials, and the lives and lineage of PBT members. They are pure, so they
//! are tested on hand-made records.

use std::collections::BTreeMap;

use archsearch_core::space::SpaceSpec;
use archsearch_core::{Architecture, Direction, Space, TrialState};
use archsearch_store::{MemberRecord, Storage, StudyRecord, TrialRecord};
use serde::Deserialize;

use crate::ReportError;

/// A study as the store holds it, with its search space.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyData {
    pub study: StudyRecord,
    /// Every trial, by number.
    pub trials: Vec<TrialRecord>,
    /// Every PBT member record, by step and member.
    pub members: Vec<MemberRecord>,
    /// Study attributes (`proxy_check`, `proxy_pairs`, …).
    pub attrs: BTreeMap<String, serde_json::Value>,
    /// The search space: the config's `[space]`, or NAS-Bench-201 for an
    /// `nb201` task without one; `None` when the config names neither.
    pub space: Option<Space>,
}

impl StudyData {
    /// Reads `study` from `store`; the space is rebuilt from the stored
    /// config (an unreadable config or an invalid `[space]` is an error).
    pub fn load(store: &dyn Storage, study: &StudyRecord) -> Result<Self, ReportError> {
        Ok(StudyData {
            study: study.clone(),
            trials: store.trials(study.id)?,
            members: store.members(study.id)?,
            attrs: store.attrs(study.id)?,
            space: space_of_config(&study.name, &study.config)?,
        })
    }
}

/// The search space a stored config describes.
pub(crate) fn space_of_config(study: &str, config: &str) -> Result<Option<Space>, ReportError> {
    let err = |reason: String| ReportError::Config { study: study.to_string(), reason };
    let table: toml::Table = toml::from_str(config).map_err(|e| err(e.to_string()))?;
    if let Some(space) = table.get("space") {
        let spec: SpaceSpec = space.clone().try_into().map_err(|e: toml::de::Error| err(format!("[space]: {e}")))?;
        return spec.build().map(Some).map_err(|e| err(format!("[space]: {e}")));
    }
    let task_kind = table.get("task").and_then(|t| t.get("kind")).and_then(|k| k.as_str());
    Ok((task_kind == Some("nb201")).then(Space::nb201))
}

/// A `kind` of a table of the stored config (`task`, `strategy`), if any.
pub(crate) fn config_kind(config: &str, table: &str) -> Option<String> {
    let t: toml::Table = toml::from_str(config).ok()?;
    Some(t.get(table)?.get("kind")?.as_str()?.to_string())
}

/// The running best of `(x, value)` points, in their order: one point per
/// input, the best value seen so far for `direction`. Non-finite values are
/// skipped.
pub(crate) fn best_so_far(direction: Direction, points: impl IntoIterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let mut best: Option<f64> = None;
    let mut out = Vec::new();
    for (x, v) in points {
        if !v.is_finite() || !x.is_finite() {
            continue;
        }
        if best.is_none_or(|b| direction.better(v, b)) {
            best = Some(v);
        }
        out.push((x, best.expect("set above")));
    }
    out
}

/// A COMPLETE trial's value, if finite.
pub(crate) fn complete_value(t: &TrialRecord) -> Option<f64> {
    t.value.filter(|v| v.is_finite() && t.state == TrialState::Complete)
}

/// Trials in the order they finished (finish time, then number); unfinished
/// trials are left out.
pub(crate) fn by_finish(trials: &[TrialRecord]) -> Vec<&TrialRecord> {
    let mut done: Vec<&TrialRecord> = trials.iter().filter(|t| t.finished_at.is_some_and(f64::is_finite)).collect();
    done.sort_by(|a, b| a.finished_at.unwrap_or(0.0).total_cmp(&b.finished_at.unwrap_or(0.0)).then(a.number.cmp(&b.number)));
    done
}

/// How often each option appears, position by position, among the best
/// COMPLETE trials.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TopFrequencies {
    /// Trials in the top group.
    pub top: usize,
    /// COMPLETE trials with a finite value and an architecture of the space.
    pub complete: usize,
    /// `freq[position][option]`: the fraction of the top group choosing it.
    pub freq: Vec<Vec<f64>>,
}

/// The option frequencies of the top `fraction` of COMPLETE trials (by
/// value for `direction`; at least one trial, ties broken by trial number).
/// `None` when no COMPLETE trial has a finite value and a readable
/// architecture of `space`.
pub(crate) fn top_frequencies(space: &Space, trials: &[TrialRecord], direction: Direction, fraction: f64) -> Option<TopFrequencies> {
    let mut ranked: Vec<(f64, u64, Vec<usize>)> = trials
        .iter()
        .filter_map(|t| {
            let v = complete_value(t)?;
            let arch: Architecture = serde_json::from_str(&t.arch_json).ok()?;
            space.validate(&arch).ok()?;
            Some((v, t.number, arch.choices))
        })
        .collect();
    if ranked.is_empty() {
        return None;
    }
    ranked.sort_by(|a, b| direction.fitness(b.0).total_cmp(&direction.fitness(a.0)).then(a.1.cmp(&b.1)));
    let top = ((ranked.len() as f64 * fraction).floor() as usize).clamp(1, ranked.len());
    let mut freq: Vec<Vec<f64>> = space.decisions().iter().map(|d| vec![0.0; d.options.len()]).collect();
    for (_, _, choices) in &ranked[..top] {
        for (pos, &c) in choices.iter().enumerate() {
            freq[pos][c] += 1.0 / top as f64;
        }
    }
    Some(TopFrequencies { top, complete: ranked.len(), freq })
}

/// One PBT member record as `pbt.rs` writes it (fields it may lack default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RawMember {
    arch: Option<String>,
    fitness: Option<f64>,
    error: Option<String>,
    event: Option<String>,
    born_at_step: Option<u64>,
    parents: Vec<u64>,
    lineage: Vec<RawLineage>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawLineage {
    parent: u64,
    origin: String,
}

/// One PBT member over its whole life.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MemberLife {
    pub id: u64,
    pub born_at_step: u64,
    pub event: String,
    /// Fitter parent first, donor last.
    pub parents: Vec<u64>,
    /// Per position: the member whose weights it holds, and how (`copied`, `donated`, …).
    pub lineage: Vec<(u64, String)>,
    pub arch: String,
    /// `(step, fitness)` at every step it was recorded at (`None`: failed).
    pub fitness: Vec<(u64, Option<f64>)>,
    /// The error of its last record, if it failed.
    pub error: Option<String>,
}

impl MemberLife {
    /// Its fitness at the last step it was recorded at.
    pub fn final_fitness(&self) -> Option<f64> {
        self.fitness.last().and_then(|(_, f)| *f)
    }
    /// The last step it was recorded at.
    pub fn last_step(&self) -> u64 {
        self.fitness.last().map(|(s, _)| *s).unwrap_or(self.born_at_step)
    }
}

/// The members of a PBT run, by id, from their records.
pub(crate) fn member_lives(records: &[MemberRecord]) -> Vec<MemberLife> {
    let mut sorted: Vec<&MemberRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.member, r.step));
    let mut lives: BTreeMap<u64, MemberLife> = BTreeMap::new();
    for r in sorted {
        let raw: RawMember = serde_json::from_value(r.record.clone()).unwrap_or_default();
        let life = lives.entry(r.member).or_insert_with(|| MemberLife {
            id: r.member,
            born_at_step: raw.born_at_step.unwrap_or(r.step),
            event: raw.event.clone().unwrap_or_else(|| "initial".into()),
            parents: raw.parents.clone(),
            lineage: raw.lineage.iter().map(|l| (l.parent, l.origin.clone())).collect(),
            arch: String::new(),
            fitness: Vec::new(),
            error: None,
        });
        if let Some(arch) = raw.arch {
            life.arch = arch;
        }
        life.fitness.push((r.step, raw.fitness.filter(|f| f.is_finite())));
        life.error = raw.error;
    }
    lives.into_values().collect()
}

/// An edge of the lineage graph: `child` descends from `parent`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Edge {
    pub child: u64,
    pub parent: u64,
    /// `fitter`, `donor` or `parent` (the only one).
    pub role: &'static str,
    /// Positions the child holds from this parent other than as a plain copy
    /// (`origin != "copied"`), with their origin.
    pub mixed: Vec<(usize, String)>,
}

/// Every parent → child edge of the members, by child then parent order.
pub(crate) fn lineage_edges(lives: &[MemberLife]) -> Vec<Edge> {
    let mut edges = Vec::new();
    for m in lives {
        let mut parents = m.parents.clone();
        parents.dedup();
        let n = parents.len();
        for (i, &p) in parents.iter().enumerate() {
            let role = match (n, i) {
                (1, _) => "parent",
                (_, 0) => "fitter",
                _ => "donor",
            };
            let mixed = m
                .lineage
                .iter()
                .enumerate()
                .filter(|(_, (parent, origin))| *parent == p && origin != "copied")
                .map(|(pos, (_, origin))| (pos, origin.clone()))
                .collect();
            edges.push(Edge { child: m.id, parent: p, role, mixed });
        }
    }
    edges
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use archsearch_store::Counts;

    pub fn study(direction: Direction, config: &str) -> StudyRecord {
        StudyRecord {
            id: 1,
            uid: "uid".into(),
            name: "s".into(),
            config: config.into(),
            seed: 7,
            direction,
            version: "0.1.0".into(),
            created_at: 1000.0,
            counts: Counts::default(),
        }
    }

    pub fn trial(number: u64, state: TrialState, choices: &[usize], value: Option<f64>) -> TrialRecord {
        TrialRecord {
            id: number as i64 + 1,
            number,
            state,
            arch: choices.iter().map(|c| format!("op{c}")).collect::<Vec<_>>().join(","),
            arch_json: serde_json::json!({ "choices": choices }).to_string(),
            seed: number,
            value,
            metrics: BTreeMap::new(),
            cost: 10.0,
            error: (state == TrialState::Fail).then(|| "boom".into()),
            started_at: 1000.0 + number as f64,
            finished_at: state.is_finished().then_some(1001.0 + number as f64),
            owner: "me".into(),
            heartbeat: 0.0,
            attempts: 1,
            crashes: 0,
            step: None,
            intermediate: Vec::new(),
        }
    }

    /// `load` reads trials, members, attributes and the space from a real store.
    #[test]
    fn load_reads_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = archsearch_store::open(dir.path().join("s.db").to_str().unwrap()).unwrap();
        let config = "[space]\nkind = \"sequence\"\nlength = 2\nnum_options = 3\n[task]\nkind = \"train\"\n";
        let new = archsearch_store::NewStudy { name: "s".into(), config: config.into(), seed: 3, direction: Direction::Minimize };
        let (record, created) = store.open_study(&new).unwrap();
        assert!(created);
        store.set_attr(record.id, "proxy_check", "[]").unwrap();
        store.record_step(record.id, 0, &[(0, "{\"fitness\": 0.5}".into())], b"{}").unwrap();
        let d = StudyData::load(store.as_ref(), &record).unwrap();
        assert!(d.trials.is_empty());
        assert_eq!(d.members.len(), 1);
        assert_eq!(d.attrs["proxy_check"], serde_json::json!([]));
        assert_eq!(d.space, Some(Space::sequence(2, 3)));
    }

    #[test]
    fn best_so_far_follows_the_direction_and_skips_nan() {
        let pts = [(0.0, 3.0), (1.0, 1.0), (2.0, f64::NAN), (3.0, 2.0), (4.0, 0.5)];
        assert_eq!(best_so_far(Direction::Minimize, pts), vec![(0.0, 3.0), (1.0, 1.0), (3.0, 1.0), (4.0, 0.5)]);
        assert_eq!(best_so_far(Direction::Maximize, pts), vec![(0.0, 3.0), (1.0, 3.0), (3.0, 3.0), (4.0, 3.0)]);
        assert!(best_so_far(Direction::Maximize, []).is_empty());
    }

    #[test]
    fn space_comes_from_the_config() {
        let seq = "[space]\nkind = \"sequence\"\nlength = 3\nnum_options = 2\n[task]\nkind = \"table\"\n";
        assert_eq!(space_of_config("s", seq).unwrap().unwrap().len(), 3);
        assert_eq!(space_of_config("s", "[task]\nkind = \"nb201\"\n").unwrap(), Some(Space::nb201()));
        assert_eq!(space_of_config("s", "[task]\nkind = \"train\"\n").unwrap(), None);
        assert!(space_of_config("s", "[space\n").is_err());
        assert!(space_of_config("s", "[space]\nkind = \"sequence\"\nlength = 0\nnum_options = 2\n").is_err());
        assert_eq!(config_kind("[strategy]\nkind = \"evolution\"\n", "strategy").as_deref(), Some("evolution"));
    }

    /// Ten complete trials on 2 positions × 3 options: the top 10 % is one
    /// trial, the top 30 % three; failed and pruned trials never count.
    #[test]
    fn top_frequencies_on_a_hand_example() {
        let space = Space::sequence(2, 3);
        let mut trials: Vec<TrialRecord> =
            (0..10).map(|i| trial(i, TrialState::Complete, &[(i % 3) as usize, 0], Some(i as f64))).collect();
        trials.push(trial(10, TrialState::Fail, &[2, 2], None));
        trials.push(trial(11, TrialState::Pruned, &[2, 2], Some(100.0)));
        let f = top_frequencies(&space, &trials, Direction::Maximize, 0.1).unwrap();
        assert_eq!((f.top, f.complete), (1, 10));
        // Trial 9: choices [0, 0].
        assert_eq!(f.freq, vec![vec![1.0, 0.0, 0.0], vec![1.0, 0.0, 0.0]]);
        // Top 30 % maximising: trials 9, 8, 7 → position 0 takes 0, 2, 1.
        let f = top_frequencies(&space, &trials, Direction::Maximize, 0.3).unwrap();
        assert_eq!(f.top, 3);
        let third = 1.0 / 3.0;
        assert!(f.freq[0].iter().all(|&x| (x - third).abs() < 1e-12));
        // Top 20 % minimising: trials 0 ([0, 0]) and 1 ([1, 0]).
        let f = top_frequencies(&space, &trials, Direction::Minimize, 0.2).unwrap();
        assert_eq!(f.freq[0], vec![0.5, 0.5, 0.0]);
        assert_eq!(f.freq[1], vec![1.0, 0.0, 0.0]);
        assert!(top_frequencies(&space, &trials[10..], Direction::Maximize, 0.1).is_none());
    }

    #[test]
    fn member_lives_and_lineage_edges() {
        let rec = |step: u64, member: u64, fitness: serde_json::Value, born: u64, parents: Vec<u64>, lineage: serde_json::Value| {
            MemberRecord {
                step,
                member,
                record: serde_json::json!({"step": step, "member": member, "arch": "a", "fitness": fitness, "event": if parents.is_empty() {"initial"} else {"child"},
                "born_at_step": born, "parents": parents, "lineage": lineage}),
            }
        };
        let records = vec![
            rec(0, 0, 0.5.into(), 0, vec![], serde_json::json!([])),
            rec(0, 1, 0.7.into(), 0, vec![], serde_json::json!([])),
            rec(1, 1, 0.8.into(), 0, vec![], serde_json::json!([])),
            rec(
                1,
                2,
                serde_json::Value::Null,
                1,
                vec![1, 0],
                serde_json::json!([{"parent": 1, "origin": "copied"}, {"parent": 0, "origin": "shrink_perturbed"}, {"parent": 0, "origin": "donated"}]),
            ),
        ];
        let lives = member_lives(&records);
        assert_eq!(lives.len(), 3);
        assert_eq!(lives[1].fitness, vec![(0, Some(0.7)), (1, Some(0.8))]);
        assert_eq!(lives[1].final_fitness(), Some(0.8));
        assert_eq!(lives[2].final_fitness(), None);
        let edges = lineage_edges(&lives);
        assert_eq!(edges.len(), 2);
        assert_eq!((edges[0].parent, edges[0].role, edges[0].mixed.len()), (1, "fitter", 0));
        assert_eq!((edges[1].parent, edges[1].role), (0, "donor"));
        assert_eq!(edges[1].mixed, vec![(1, "shrink_perturbed".to_string()), (2, "donated".to_string())]);
    }
}
