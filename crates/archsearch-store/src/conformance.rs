//! The conformance suite every storage backend must pass. Call
//! [`run_all`] from the backend's tests with a factory of fresh, empty stores.

use std::collections::BTreeMap;

use archsearch_core::{Direction, TrialState};

use crate::{Finish, Launch, NewStudy, NewTrial, StateLog, StateSince, StateWrite, Storage, StoreError};

fn study(store: &mut dyn Storage, name: &str) -> i64 {
    let new = NewStudy { name: name.into(), config: "seed = 1\n".into(), seed: 1, direction: Direction::Maximize };
    store.open_study(&new).unwrap().0.id
}

/// A whole state written as a snapshot.
fn w(state: Vec<u8>) -> StateWrite {
    StateWrite::snapshot(state)
}

/// The stored state, which the tests write as snapshots.
fn stored(s: &dyn Storage, id: i64) -> (u64, Vec<u8>) {
    let (v, log) = s.strategy_state(id, 0).unwrap();
    match log.since {
        StateSince::Snapshot(bytes, entries) if entries.is_empty() => (v, bytes),
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// The state a callback was handed, if any.
fn handed(log: &StateLog) -> Option<Vec<u8>> {
    match &log.since {
        StateSince::Current => None,
        StateSince::Snapshot(b, _) => Some(b.clone()),
        StateSince::Entries(e) => Some(e.concat()),
    }
}

fn trial(arch: &str) -> Launch {
    Launch::New(NewTrial { arch: arch.into(), arch_json: format!("{{\"choices\":[{}]}}", arch.len()), seed: 9, step: None })
}

fn at_step(arch: &str, step: u64) -> Launch {
    match trial(arch) {
        Launch::New(t) => Launch::New(NewTrial { step: Some(step), ..t }),
        r => r,
    }
}

fn complete(v: f64) -> Finish {
    Finish { state: TrialState::Complete, value: Some(v), metrics: BTreeMap::from([("acc".to_string(), v)]), cost: 2.0, error: None }
}

/// Runs every conformance check, each on a fresh store from `make`.
pub fn run_all(make: &mut dyn FnMut() -> Box<dyn Storage>) {
    studies_open_once(make().as_mut());
    ask_and_tell_record_trials_and_state(make().as_mut());
    finished_trials_are_immutable(make().as_mut());
    stale_state_is_handed_back(make().as_mut());
    orphans_of_dead_owners_are_claimed(make().as_mut());
    ask_can_decline(make().as_mut());
    population_steps_are_recorded(make().as_mut());
    attributes_round_trip(make().as_mut());
    paused_trials_resume_or_are_pruned(make().as_mut());
    the_state_log_hands_back_what_changed(make().as_mut());
    only_the_owner_may_report_beat_or_tell(make().as_mut());
    a_crashed_attempt_is_charged_its_cost(make().as_mut());
    studies_have_unique_ids_and_configs_can_grow(make().as_mut());
    a_released_trial_is_rerun_without_counting_a_crash(make().as_mut());
    concurrent_runners_never_share_a_trial(make().as_mut());
}

/// Runners on their own connections ask, tell and claim at the same time:
/// every trial gets one number and one owner, and each orphan is claimed by
/// exactly one of them.
fn concurrent_runners_never_share_a_trial(s: &mut dyn Storage) {
    let id = study(s, "concurrent");
    let runners = 4;
    let per = 25;
    let handles: Vec<_> = (0..runners)
        .map(|r| {
            let mut c = s.connect_again().unwrap().expect("a store on disk or a server connects again");
            std::thread::spawn(move || {
                let owner = format!("remote-w{r}:1:1");
                let mut mine = Vec::new();
                for i in 0..per {
                    let st = c.ask(id, 0, &owner, &mut |_, _| Ok(Some((entry(b"a"), trial(&format!("w{r}-{i}")))))).unwrap().unwrap();
                    c.tell(id, st.trial_id, &owner, 0, &complete(i as f64), &mut |_| Ok((entry(b"t"), vec![]))).unwrap();
                    mine.push(st.number);
                }
                mine
            })
        })
        .collect();
    let mut numbers: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..(runners * per) as u64).collect::<Vec<_>>(), "every number once");
    let c = s.study("concurrent").unwrap().counts;
    assert_eq!((c.started, c.finished), ((runners * per) as u64, (runners * per) as u64));
    let (version, _) = s.strategy_state(id, 0).unwrap();
    assert_eq!(version, 2 * (runners * per) as u64, "every ask and tell wrote the state once");
    // Orphans of a dead remote runner, claimed by four runners at once.
    let orphans = 20;
    for i in 0..orphans {
        s.ask(id, 0, "remote-dead:1:1", &mut |_, _| Ok(Some((entry(b"a"), trial(&format!("o{i}")))))).unwrap();
    }
    // Stale after 1 s: the orphans are, a trial claimed a moment ago is not.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let handles: Vec<_> = (0..runners)
        .map(|r| {
            let mut c = s.connect_again().unwrap().unwrap();
            std::thread::spawn(move || c.claim_orphans(id, &format!("remote-c{r}:1:1"), 1.0).unwrap())
        })
        .collect();
    let mut claimed: Vec<(u64, String)> = handles.into_iter().flat_map(|h| h.join().unwrap()).map(|t| (t.number, t.owner)).collect();
    claimed.sort();
    assert_eq!(claimed.len(), orphans, "each orphan claimed once: {claimed:?}");
    claimed.dedup_by_key(|(n, _)| *n);
    assert_eq!(claimed.len(), orphans);
    for (n, owner) in &claimed {
        assert_eq!(&s.trial(id, *n).unwrap().owner, owner, "the stored owner is the claimer");
    }
}

fn a_released_trial_is_rerun_without_counting_a_crash(s: &mut dyn Storage) {
    let id = study(s, "release");
    for (owner, arch) in [("remote-r:1:1", "a"), ("remote-d:1:1", "b")] {
        s.ask(id, 0, owner, &mut |_, _| Ok(Some((w(vec![]), trial(arch))))).unwrap();
    }
    assert_eq!(s.release("remote-r:1:1").unwrap(), 1);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let claimed = s.claim_orphans(id, "me", 0.01).unwrap();
    let got: Vec<(&str, u32, u32)> = claimed.iter().map(|t| (t.arch.as_str(), t.attempts, t.crashes)).collect();
    assert_eq!(got, vec![("a", 2, 0), ("b", 2, 1)], "the released trial did not crash; the other did");
    assert_eq!(s.trial(id, 0).unwrap().crashes, 0);
}

fn entry(e: &[u8]) -> StateWrite {
    StateWrite { entry: e.to_vec(), ..Default::default() }
}

fn the_state_log_hands_back_what_changed(s: &mut dyn Storage) {
    let id = study(s, "log");
    let st = s.ask(id, 0, "me", &mut |log, _| {
        assert!(log.wants_snapshot(1), "with no snapshot yet, the first write is one");
        Ok(Some((w(b"S1".to_vec()), trial("a"))))
    });
    let v1 = st.unwrap().unwrap().state_version;
    let mut v = v1;
    for e in [&b"e2"[..], b"e3", b"e4"] {
        let st = s.ask(id, v, "me", &mut |log, _| {
            assert_eq!(log.since, StateSince::Current);
            Ok(Some((entry(e), trial("b"))))
        });
        v = st.unwrap().unwrap().state_version;
    }
    assert_eq!(v, v1 + 3);
    // A caller at v1 gets the entries after it; a caller at 0 the snapshot and all of them.
    let (now_v, log) = s.strategy_state(id, v1 + 1).unwrap();
    assert_eq!((now_v, log.since), (v, StateSince::Entries(vec![b"e3".to_vec(), b"e4".to_vec()])));
    let (_, log) = s.strategy_state(id, 0).unwrap();
    assert_eq!(log.since, StateSince::Snapshot(b"S1".to_vec(), vec![b"e2".to_vec(), b"e3".to_vec(), b"e4".to_vec()]));
    assert_eq!((log.log_bytes, log.snapshot_bytes), (6, 2));
    assert!(log.wants_snapshot(0), "the log outgrew the snapshot");
    // A snapshot replaces the log.
    let st = s.ask(id, v, "me", &mut |_, _| Ok(Some((w(b"S5-long".to_vec()), trial("c"))))).unwrap().unwrap();
    let (_, log) = s.strategy_state(id, v1).unwrap();
    assert_eq!((log.since, log.log_bytes, log.snapshot_bytes), (StateSince::Snapshot(b"S5-long".to_vec(), vec![]), 0, 7));
    assert_eq!(s.strategy_state(id, st.state_version).unwrap().1.since, StateSince::Current);
    // A declined ask writes nothing.
    s.ask(id, st.state_version, "me", &mut |_, _| Ok(None)).unwrap();
    assert_eq!(s.strategy_state(id, st.state_version).unwrap().0, st.state_version);
    // Population steps write snapshots too.
    s.record_step(id, 0, &[(0, "{}".into())], b"P").unwrap();
    assert_eq!(stored(s, id).1, b"P".to_vec());
}

fn only_the_owner_may_report_beat_or_tell(s: &mut dyn Storage) {
    let id = study(s, "own");
    let st = s.ask(id, 0, "me", &mut |_, _| Ok(Some((w(vec![]), trial("a"))))).unwrap().unwrap();
    assert!(s.heartbeat(st.trial_id, "me", 1.0).unwrap());
    assert!(!s.heartbeat(st.trial_id, "thief", 1.0).unwrap());
    let e = s.report(st.trial_id, "thief", 1, 0.5).unwrap_err();
    assert!(matches!(&e, StoreError::NotOwner { owner, .. } if owner == "me"), "{e}");
    let e = s.tell(id, st.trial_id, "thief", 0, &complete(1.0), &mut |_| Ok((w(vec![9]), vec![]))).unwrap_err();
    assert!(matches!(e, StoreError::NotOwner { .. }), "{e}");
    let t = s.trial(id, 0).unwrap();
    assert_eq!((t.state, t.intermediate.len(), t.owner.as_str()), (TrialState::Running, 0, "me"));
    assert_eq!(s.study("own").unwrap().counts.finished, 0, "a refused tell changes nothing");
    // Once another runner claims the trial (stale heartbeat), the first one's tell is refused.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let claimed = s.claim_orphans(id, "remote-b:1:1", 0.01).unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(!s.heartbeat(st.trial_id, "me", 2.0).unwrap());
    assert!(matches!(s.tell(id, st.trial_id, "me", 0, &complete(1.0), &mut |_| Ok((w(vec![]), vec![]))), Err(StoreError::NotOwner { .. })));
    s.tell(id, st.trial_id, "remote-b:1:1", 0, &complete(2.0), &mut |_| Ok((w(vec![]), vec![]))).unwrap();
    assert_eq!(s.trial(id, 0).unwrap().value, Some(2.0));
    assert!(matches!(s.trial(id, 7), Err(StoreError::NoTrial(_))));
}

fn a_crashed_attempt_is_charged_its_cost(s: &mut dyn Storage) {
    let id = study(s, "crash");
    let dead = "remote-c:1:1";
    let st = s.ask(id, 0, dead, &mut |_, _| Ok(Some((w(vec![]), trial("a"))))).unwrap().unwrap();
    assert!(s.heartbeat(st.trial_id, dead, 5.0).unwrap());
    assert!(s.heartbeat(st.trial_id, dead, 7.5).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let claimed = s.claim_orphans(id, "me", 0.01).unwrap();
    assert_eq!((claimed[0].attempts, claimed[0].cost), (2, 7.5));
    assert_eq!(s.study("crash").unwrap().counts.cost, 7.5, "the lost attempt counts against a cost budget");
    s.tell(id, st.trial_id, "me", 0, &Finish { cost: 2.0, ..complete(1.0) }, &mut |_| Ok((w(vec![]), vec![]))).unwrap();
    assert_eq!(s.trial(id, 0).unwrap().cost, 9.5, "a trial's cost is the sum of its attempts");
    assert_eq!(s.study("crash").unwrap().counts.cost, 9.5);
}

fn studies_have_unique_ids_and_configs_can_grow(s: &mut dyn Storage) {
    let a = s.open_study(&NewStudy { name: "a".into(), config: "trials = 1\n".into(), seed: 1, direction: Direction::Maximize }).unwrap().0;
    let b = s.open_study(&NewStudy { name: "b".into(), config: "trials = 1\n".into(), seed: 1, direction: Direction::Maximize }).unwrap().0;
    assert!(a.uid.len() >= 16 && a.uid != b.uid, "{} {}", a.uid, b.uid);
    s.set_config(a.id, "trials = 2\n").unwrap();
    let again = s.study("a").unwrap();
    assert_eq!((again.config.as_str(), again.uid.as_str()), ("trials = 2\n", a.uid.as_str()));
}

fn paused(v: f64, cost: f64) -> Finish {
    Finish { state: TrialState::Paused, cost, ..complete(v) }
}

fn paused_trials_resume_or_are_pruned(s: &mut dyn Storage) {
    let id = study(s, "mf");
    let mut ids = Vec::new();
    for a in ["a", "b", "c"] {
        let st = s.ask(id, 0, "me", &mut |_, _| Ok(Some((w(vec![]), at_step(a, 1))))).unwrap().unwrap();
        s.report(st.trial_id, "me", 1, 0.5).unwrap();
        ids.push(st.trial_id);
    }
    for (i, &t) in ids.iter().enumerate() {
        s.tell(id, t, "me", 0, &paused(i as f64, 1.0), &mut |_| Ok((w(vec![]), vec![]))).unwrap();
    }
    let c = s.study("mf").unwrap().counts;
    assert_eq!((c.started, c.finished, c.cost), (3, 0, 3.0), "paused trials are not finished, their cost counts");
    assert!(s.trials(id).unwrap().iter().all(|t| t.state == TrialState::Paused && t.step == Some(1) && t.finished_at.is_none()));
    // A paused trial takes no intermediate values until it is resumed.
    assert!(s.report(ids[2], "me", 2, 1.0).is_err());
    // Resume trial 2 to step 3: same trial, RUNNING again; trial 0 is pruned at its tell.
    let st = s.ask(id, 0, "me", &mut |_, _| Ok(Some((w(b"r".to_vec()), Launch::Resume { number: 2, step: 3 })))).unwrap().unwrap();
    assert_eq!((st.trial_id, st.number), (ids[2], 2));
    assert_eq!(s.study("mf").unwrap().counts.started, 3, "a resume starts no new trial");
    s.report(st.trial_id, "me", 3, 0.9).unwrap();
    s.tell(id, st.trial_id, "me", 0, &Finish { cost: 3.0, ..complete(0.9) }, &mut |_| Ok((w(b"t".to_vec()), vec![0]))).unwrap();
    let t = s.trials(id).unwrap();
    assert_eq!((t[0].state, t[0].step, t[0].value), (TrialState::Pruned, Some(1), Some(0.0)));
    assert_eq!((t[2].state, t[2].step, t[2].value, t[2].cost), (TrialState::Complete, Some(3), Some(0.9), 4.0));
    assert_eq!(t[2].intermediate, vec![(1, 0.5), (3, 0.9)]);
    // Only paused trials can be resumed or pruned, and a refused prune changes nothing.
    let e = s.ask(id, 0, "me", &mut |_, _| Ok(Some((w(vec![]), Launch::Resume { number: 0, step: 3 })))).unwrap_err();
    assert!(matches!(e, StoreError::NotPaused(0, _)), "{e}");
    let st = s.ask(id, 0, "me", &mut |_, _| Ok(Some((w(vec![]), at_step("d", 1))))).unwrap().unwrap();
    let e = s.tell(id, st.trial_id, "me", 0, &paused(1.0, 1.0), &mut |_| Ok((w(vec![]), vec![2]))).unwrap_err();
    assert!(matches!(e, StoreError::NotPaused(2, _)), "{e}");
    assert_eq!(s.trials(id).unwrap()[3].state, TrialState::Running);
    // The end of the search prunes what is still paused, at its step, but
    // not while a trial runs (another runner's tell may still resume them).
    let other = s.ask(id, 0, "me", &mut |_, _| Ok(Some((w(vec![]), at_step("e", 1))))).unwrap().unwrap();
    s.tell(id, st.trial_id, "me", 0, &paused(1.0, 1.0), &mut |_| Ok((w(vec![]), vec![]))).unwrap();
    assert_eq!(s.prune_paused(id).unwrap(), 0);
    // Naming a trial someone else already pruned is fine.
    s.tell(id, other.trial_id, "me", 0, &complete(0.5), &mut |_| Ok((w(vec![]), vec![0]))).unwrap();
    assert_eq!(s.prune_paused(id).unwrap(), 2);
    let t = s.trials(id).unwrap();
    assert!(t.iter().all(|t| t.state.is_finished()));
    assert_eq!((t[1].state, t[1].step), (TrialState::Pruned, Some(1)));
    let c = s.study("mf").unwrap().counts;
    assert_eq!((c.started, c.finished, c.cost), (5, 5, 9.0));
}

fn attributes_round_trip(s: &mut dyn Storage) {
    let id = study(s, "attrs");
    s.set_attr(id, "proxy_check", "{\"tau\":0.5}").unwrap();
    s.set_attr(id, "proxy_check", "{\"tau\":0.7}").unwrap();
    s.set_attr(id, "note", "\"hello\"").unwrap();
    let a = s.attrs(id).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a["proxy_check"]["tau"].as_f64(), Some(0.7));
    assert_eq!(a["note"], "hello");
}

fn population_steps_are_recorded(s: &mut dyn Storage) {
    let id = study(s, "pbt");
    s.record_step(id, 0, &[(0, "{\"fitness\":1.0}".into()), (1, "{\"fitness\":2.0}".into())], b"step-1").unwrap();
    s.record_step(id, 1, &[(0, "{\"fitness\":3.0}".into())], b"step-2").unwrap();
    // Re-recording a step (a resumed run) replaces it.
    s.record_step(id, 1, &[(0, "{\"fitness\":4.0}".into())], b"step-2b").unwrap();
    let m = s.members(id).unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!((m[2].step, m[2].member, m[2].record["fitness"].as_f64()), (1, 0, Some(4.0)));
    assert_eq!(stored(s, id).1, b"step-2b".to_vec());
    // A tell may carry population records: written with its state, or not at all.
    let st = s.ask(id, 0, "me", &mut |_, _| Ok(Some((w(b"a".to_vec()), trial("m"))))).unwrap().unwrap();
    let with_records = |state: &[u8]| StateWrite {
        members: vec![(2, 0, "{\"fitness\":5.0}".into()), (2, 1, "{\"fitness\":6.0}".into())],
        ..w(state.to_vec())
    };
    let e = s.tell(id, st.trial_id, "me", 0, &complete(1.0), &mut |_| {
        let _ = with_records(b"x");
        Err("refused".into())
    });
    assert!(e.is_err());
    assert_eq!(s.members(id).unwrap().len(), 3, "a failed tell writes no records");
    s.tell(id, st.trial_id, "me", 0, &complete(1.0), &mut |_| Ok((with_records(b"step-3"), vec![]))).unwrap();
    let m = s.members(id).unwrap();
    assert_eq!((m.len(), m[4].step, m[4].member, m[4].record["fitness"].as_f64()), (5, 2, 1, Some(6.0)));
    assert_eq!(stored(s, id).1, b"step-3".to_vec());
}

fn studies_open_once(s: &mut dyn Storage) {
    let new = NewStudy { name: "a".into(), config: "x = 1\n".into(), seed: 5, direction: Direction::Minimize };
    let (rec, created) = s.open_study(&new).unwrap();
    assert!(created);
    let again = NewStudy { config: "x = 2\n".into(), ..new };
    let (rec2, created2) = s.open_study(&again).unwrap();
    assert!(!created2);
    assert_eq!(rec, rec2);
    assert_eq!(rec2.config, "x = 1\n");
    assert_eq!(rec2.direction, Direction::Minimize);
    assert_eq!(rec2.seed, 5);
    assert!(matches!(s.study("nope"), Err(StoreError::NoStudy(_))));
    assert_eq!(s.studies().unwrap().len(), 1);
}

fn ask_and_tell_record_trials_and_state(s: &mut dyn Storage) {
    let id = study(s, "s");
    let started = s.ask(id, 0, "me", &mut |state, counts| {
        assert_eq!(state.since, StateSince::Current, "a new study is at version 0, the initial state");
        assert_eq!(counts.started, 0);
        Ok(Some((w(b"state-1".to_vec()), trial("abc"))))
    });
    let started = started.unwrap().unwrap();
    assert_eq!(started.number, 0);
    s.report(started.trial_id, "me", 2, 0.5).unwrap();
    s.report(started.trial_id, "me", 1, 0.25).unwrap();
    let v = s.tell(id, started.trial_id, "me", started.state_version, &complete(0.75), &mut |state| {
        assert_eq!(state.since, StateSince::Current, "nobody else wrote");
        Ok((w(b"state-2".to_vec()), vec![]))
    });
    let v = v.unwrap();
    assert_eq!(stored(s, id), (v, b"state-2".to_vec()));
    let trials = s.trials(id).unwrap();
    assert_eq!(trials.len(), 1);
    let t = &trials[0];
    assert_eq!((t.state, t.value, t.arch.as_str(), t.seed), (TrialState::Complete, Some(0.75), "abc", 9));
    assert_eq!(t.metrics["acc"], 0.75);
    assert_eq!(t.intermediate, vec![(1, 0.25), (2, 0.5)]);
    assert!(t.finished_at.unwrap() >= t.started_at);
    let counts = s.study("s").unwrap().counts;
    assert_eq!((counts.started, counts.finished, counts.cost), (1, 1, 2.0));
    // Failures carry their reason.
    let st = s.ask(id, v, "me", &mut |_, _| Ok(Some((w(b"s3".to_vec()), trial("x"))))).unwrap().unwrap();
    let fail = Finish { state: TrialState::Fail, value: None, metrics: BTreeMap::new(), cost: 0.0, error: Some("NaN loss".into()) };
    s.tell(id, st.trial_id, "me", st.state_version, &fail, &mut |_| Ok((w(b"s4".to_vec()), vec![]))).unwrap();
    let t = &s.trials(id).unwrap()[1];
    assert_eq!((t.state, t.error.as_deref(), t.number), (TrialState::Fail, Some("NaN loss"), 1));
}

fn finished_trials_are_immutable(s: &mut dyn Storage) {
    let id = study(s, "s");
    let st = s.ask(id, 0, "me", &mut |_, _| Ok(Some((w(vec![1]), trial("a"))))).unwrap().unwrap();
    let v = s.tell(id, st.trial_id, "me", st.state_version, &complete(1.0), &mut |_| Ok((w(vec![2]), vec![]))).unwrap();
    let again = s.tell(id, st.trial_id, "me", v, &complete(2.0), &mut |_| Ok((w(vec![3]), vec![])));
    assert!(matches!(again, Err(StoreError::Finished(_))), "{again:?}");
    assert!(matches!(s.report(st.trial_id, "me", 5, 1.0), Err(StoreError::Finished(_))));
    assert_eq!(s.trials(id).unwrap()[0].value, Some(1.0));
    assert_eq!(stored(s, id).1, vec![2]);
}

fn stale_state_is_handed_back(s: &mut dyn Storage) {
    let id = study(s, "s");
    let st = s.ask(id, 0, "me", &mut |_, _| Ok(Some((w(b"A".to_vec()), trial("a"))))).unwrap().unwrap();
    // A caller that knows an older version is handed the stored state.
    let mut seen = None;
    s.ask(id, 0, "other", &mut |state, counts| {
        seen = handed(state);
        assert_eq!(counts.started, 1);
        Ok(Some((w(b"B".to_vec()), trial("b"))))
    })
    .unwrap();
    assert_eq!(seen.as_deref(), Some(&b"A"[..]));
    let mut seen = None;
    s.tell(id, st.trial_id, "me", st.state_version, &complete(1.0), &mut |state| {
        seen = handed(state);
        Ok((w(b"C".to_vec()), vec![]))
    })
    .unwrap();
    assert_eq!(seen.as_deref(), Some(&b"B"[..]));
}

fn orphans_of_dead_owners_are_claimed(s: &mut dyn Storage) {
    let id = study(s, "s");
    let host = crate::machine();
    let dead = format!("{host}:999999999:1");
    let me = crate::owner_id(42);
    s.ask(id, 0, &dead, &mut |_, _| Ok(Some((w(vec![]), trial("dead"))))).unwrap();
    s.ask(id, 0, &me, &mut |_, _| Ok(Some((w(vec![]), trial("mine"))))).unwrap();
    s.ask(id, 0, "remote:1:1", &mut |_, _| Ok(Some((w(vec![]), trial("remote"))))).unwrap();
    let claimed = s.claim_orphans(id, &me, 3600.0).unwrap();
    assert_eq!(claimed.iter().map(|t| t.arch.as_str()).collect::<Vec<_>>(), vec!["dead"]);
    assert_eq!((claimed[0].owner.as_str(), claimed[0].attempts), (me.as_str(), 2));
    // A remote owner without a heartbeat for longer than `stale_after` is gone too.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let claimed = s.claim_orphans(id, &me, 0.01).unwrap();
    assert_eq!(claimed.iter().map(|t| t.arch.as_str()).collect::<Vec<_>>(), vec!["remote"]);
}

fn ask_can_decline(s: &mut dyn Storage) {
    let id = study(s, "s");
    assert!(s.ask(id, 0, "me", &mut |_, _| Ok(None)).unwrap().is_none());
    assert_eq!(s.study("s").unwrap().counts.started, 0);
    assert!(s.trials(id).unwrap().is_empty());
    let e = s.ask(id, 0, "me", &mut |_, _| Err("budget config broken".into())).unwrap_err();
    assert!(e.to_string().contains("budget config broken"));
}
