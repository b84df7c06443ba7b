//! Population based training, and PBT-NAS: population based training that
//! searches architectures.
//!
//! Jaderberg et al., "Population Based Training of Neural Networks", 2017;
//! Chebykin, Alderliesten & Bosman, "Shrink-Perturb Improves Architecture
//! Mixing during Population Based Training for Neural Architecture Search",
//! ECAI 2023.
//!
//! A population of `population` members (architecture, learning rate,
//! weights, optimiser state) trains in parallel. Every `interval` epochs all
//! members are ranked by validation accuracy and the bottom `bottom` fraction
//! is replaced:
//!
//! * `pbt-nas` — each replaced member becomes a child of two distinct parents
//!   drawn uniformly from the top `top` fraction. The fitter parent is copied
//!   whole (optimiser state kept where shapes match); each position takes the
//!   other parent's option with probability `mix_probability`, with that
//!   parent's weights shrink-perturbed, `λ·w + γ·w_fresh` (see
//!   `archsearch_train::mixing`). No mixing after the last step. The initial
//!   population is sampled stratified per position.
//! * ablations: `no-mixing` (the fitter parent mixed with itself), `copy`
//!   (λ = 1, γ = 0), `reinit` (λ = 0, γ = 1);
//! * `mutation` — PBT with mutations instead of mixing (SEARL-like): copy a
//!   top member, then with probability 1/3 each do nothing, add Gaussian
//!   noise to its weights, or resample one position with fresh weights;
//! * `pbt` — classic PBT: copy a top member (weights, optimiser state,
//!   learning rate), then multiply the learning rate by 0.8 or 1.2, or
//!   resample it (`explore`);
//! * `random` — random search at equal compute: `population` random
//!   architectures trained for the whole budget, the best picked on validation.
//!
//! Defaults are the paper's (fractions 25 %, mixing probability 0.25,
//! λ = 0.4, γ = 0.1); the population and budget default to what fits a small
//! machine. Every member at every step is recorded with its lineage; the
//! state after each step is saved, so a killed run continues from its last
//! completed step with the same population, weights and random state.
//!
//! `run` trains the population in one process. `work` lets any number of
//! worker processes, on any machines that reach the store (and the artifact
//! store that shares member checkpoints), train one population together:
//! each member's interval is a trial, asked and told as any other (so a
//! dead worker's member is claimed and trained again from its checkpoint);
//! the exploit step is taken once, inside the tell of whichever worker
//! completes the interval last, in the transaction that records the step's
//! members and the next state. The same config and seed give the same
//! population either way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use archsearch_core::TrialState;
use archsearch_core::{Architecture, Rng, Space};
use archsearch_store::{Finish, Launch, NewStudy, NewTrial, StateLog, StateSince, StateWrite, Storage, StoreError};
use archsearch_tasks::{Artifacts, SharedSlot};
use archsearch_train::mixing::{self, Origin, ShrinkPerturb};
use archsearch_train::{checkpoint, TrainTask};
use rand::seq::IndexedRandom;
use rand::{Rng as _, SeedableRng};
use serde::{Deserialize, Serialize};

/// Which algorithm (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    PbtNas,
    NoMixing,
    Copy,
    Reinit,
    Mutation,
    Pbt,
    Random,
}

/// How classic PBT explores the learning rate it copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Explore {
    /// Multiply by 0.8 or 1.2 (Jaderberg et al.'s "perturb").
    Perturb,
    /// Draw anew, log-uniform in `lr_range` ("resample").
    Resample,
}

/// Settings of PBT and PBT-NAS (`[strategy] kind = "pbt"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub variant: Variant,
    /// Members `N`.
    pub population: usize,
    /// Epochs between two exploit steps.
    pub interval: usize,
    /// Total epochs each member trains (a multiple of `interval`).
    pub epochs: usize,
    /// Fraction replaced at each step.
    pub bottom: f64,
    /// Fraction that parents are drawn from.
    pub top: f64,
    /// Probability that a position takes the donor's option (PBT-NAS `replace_arch_percent`).
    pub mix_probability: f64,
    /// λ of shrink-perturb.
    pub shrink: f64,
    /// γ of shrink-perturb.
    pub perturb: f64,
    /// Standard deviation of the weight noise of the `mutation` variant.
    pub noise_std: f64,
    /// Classic PBT: how the copied learning rate is explored.
    pub explore: Explore,
    /// Classic PBT with `explore = "resample"`: the learning-rate range.
    pub lr_range: [f64; 2],
}

impl Default for Config {
    fn default() -> Self {
        Config {
            variant: Variant::PbtNas,
            population: 8,
            interval: 1,
            epochs: 4,
            bottom: 0.25,
            top: 0.25,
            mix_probability: 0.25,
            shrink: 0.4,
            perturb: 0.1,
            noise_std: 0.01,
            explore: Explore::Perturb,
            lr_range: [1e-4, 1e-1],
        }
    }
}

impl Config {
    pub fn check(&self) -> Result<()> {
        if self.population < 2 || self.interval == 0 || self.epochs == 0 || !self.epochs.is_multiple_of(self.interval) {
            bail!("needs `population` >= 2, `interval` >= 1 and `epochs` a positive multiple of `interval`");
        }
        if !(self.lr_range[0] > 0.0 && self.lr_range[0] < self.lr_range[1]) {
            bail!("needs 0 < `lr_range[0]` < `lr_range[1]`");
        }
        if !(0.0..=0.5).contains(&self.bottom) || !(0.0..=0.5).contains(&self.top) || !(0.0..=1.0).contains(&self.mix_probability) {
            bail!("needs 0 <= `bottom`, `top` <= 0.5 and 0 <= `mix_probability` <= 1");
        }
        Ok(())
    }

    fn shrink_perturb(&self) -> ShrinkPerturb {
        match self.variant {
            Variant::Copy => ShrinkPerturb::COPY,
            Variant::Reinit => ShrinkPerturb::REINIT,
            _ => ShrinkPerturb { shrink: self.shrink, perturb: self.perturb },
        }
    }

    fn steps(&self) -> usize {
        self.epochs / self.interval
    }
}

/// Where one position of a member came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lineage {
    /// The member whose weights it holds.
    pub parent: u64,
    pub origin: Origin,
}

/// One member of the population.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub id: u64,
    pub arch: Architecture,
    pub lr: f64,
    pub seed: u64,
    pub fitness: Option<f64>,
    pub error: Option<String>,
    /// How the member came to be: `initial`, `child`, `exploit`, `mutation`.
    pub event: String,
    pub born_at_step: usize,
    pub parents: Vec<u64>,
    /// Per position, empty for initial members.
    pub lineage: Vec<Lineage>,
}

/// Everything the run needs to continue: saved after every step (and, with
/// workers, after every ask and tell).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// The next step to train.
    step: usize,
    next_id: u64,
    members: Vec<Member>,
    rng: Rng,
    /// What workers are doing in this step (empty for `run`).
    #[serde(default, skip_serializing_if = "Work::is_idle")]
    work: Work,
}

/// The members of the current step that workers were handed and finished.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Work {
    /// Positions in `members` handed to a worker in this step.
    asked: Vec<usize>,
    /// Positions whose training this step was told.
    told: Vec<usize>,
    /// The trial training each handed member, by trial number.
    jobs: BTreeMap<u64, usize>,
    /// The end: the best member and its test accuracy.
    outcome: Option<(Member, Option<f64>)>,
}

impl Work {
    fn is_idle(&self) -> bool {
        self.asked.is_empty() && self.told.is_empty() && self.jobs.is_empty() && self.outcome.is_none()
    }
}

/// A PBT run on a store.
pub struct Run<'a> {
    pub config: Config,
    pub space: Space,
    pub task: &'a TrainTask,
    pub study: i64,
    /// The study's name (the artifact store's keys start with it).
    pub name: String,
    /// The study's unique id, which every member checkpoint carries.
    pub uid: String,
    pub seed: u64,
    pub workers: usize,
    /// Member checkpoints live in `root/member-ID/`.
    pub root: PathBuf,
    /// Where member checkpoints are shared with other workers, if anywhere.
    pub artifacts: Option<Arc<dyn Artifacts>>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub best: Member,
    pub test_accuracy: Option<f64>,
    /// Member-epochs trained (the compute used).
    pub member_epochs: usize,
}

fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    crate::study::trial_seed(seed ^ a.wrapping_mul(0xA24B_AED4_963E_E407), b)
}

fn member_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("member-{id}"))
}

impl Run<'_> {
    fn dir(&self, id: u64) -> PathBuf {
        member_dir(&self.root, id)
    }

    /// Where member `id`'s checkpoint is shared, if anywhere.
    fn shared(&self, id: u64) -> Option<SharedSlot> {
        let key = crate::study::shared_key_of(&self.name, &self.uid, &format!("member-{id}"));
        self.artifacts.as_ref().map(|store| SharedSlot { store: store.clone(), key })
    }

    /// The checkpoint of member `m` (it must carry `m`'s fingerprint).
    fn read_member(&self, m: &Member) -> Result<BTreeMap<String, tch::Tensor>> {
        if let Some(shared) = self.shared(m.id) {
            checkpoint::pull(&self.dir(m.id), &shared);
        }
        let fp = self.task.fingerprint(&self.uid, format!("member-{}", m.id), &m.arch);
        checkpoint::read(&self.dir(m.id), &fp)
            .ok_or_else(|| anyhow!("member {}: no usable checkpoint in {}", m.id, self.dir(m.id).display()))
    }

    fn initial_state(&self) -> State {
        let mut rng = Rng::seed_from_u64(self.seed);
        let n = self.config.population;
        let archs = match self.config.variant {
            Variant::Random | Variant::Pbt | Variant::Mutation => (0..n).map(|_| self.space.sample(&mut rng)).collect(),
            _ => self.space.sample_stratified(n, &mut rng),
        };
        let lr = self.task.config().optimizer.lr;
        let members = archs
            .into_iter()
            .enumerate()
            .map(|(i, arch)| Member {
                id: i as u64,
                arch,
                lr,
                seed: mix_seed(self.seed, i as u64, 0),
                fitness: None,
                error: None,
                event: "initial".into(),
                born_at_step: 0,
                parents: Vec::new(),
                lineage: Vec::new(),
            })
            .collect();
        State { step: 0, next_id: n as u64, members, rng, work: Work::default() }
    }

    /// Runs (or resumes) to the end in this process; returns the best member.
    pub fn run(&mut self, store: &mut dyn Storage, on_step: &mut dyn FnMut(usize, &[Member])) -> Result<Outcome> {
        self.config.check()?;
        let (_, log) = store.strategy_state(self.study, 0)?;
        let mut state = match log.since {
            archsearch_store::StateSince::Snapshot(bytes, _) if !bytes.is_empty() => {
                serde_json::from_slice(&bytes).context("stored PBT state")?
            }
            _ => self.initial_state(),
        };
        let steps = self.config.steps();
        while state.step < steps {
            let until = (state.step + 1) * self.config.interval;
            train_all(self, &mut state.members, until);
            let step = state.step;
            let records: Vec<(u64, String)> = state
                .members
                .iter()
                .map(|m| (m.id, serde_json::to_string(&record(&self.space, m, step)).expect("member serialises")))
                .collect();
            on_step(step, &state.members);
            state.step += 1;
            let last = state.step == steps;
            if !last && self.config.variant != Variant::Random {
                self.exploit_and_explore(&mut state)?;
            }
            let bytes = serde_json::to_vec(&state)?;
            store.record_step(self.study, step as u64, &records, &bytes)?;
        }
        let (best, test) = self.final_outcome(&state)?;
        Ok(Outcome { best, test_accuracy: test, member_epochs: self.config.population * self.config.epochs })
    }

    /// The best member at the end, and its test accuracy.
    fn final_outcome(&self, state: &State) -> Result<(Member, Option<f64>)> {
        let best = state
            .members
            .iter()
            .filter(|m| m.fitness.is_some())
            .max_by(|a, b| a.fitness.unwrap().total_cmp(&b.fitness.unwrap()))
            .cloned()
            .ok_or_else(|| anyhow!("every member failed"))?;
        let test = self.train(&best, self.config.epochs, true, &mut || true)?.test_accuracy;
        Ok((best, test))
    }

    /// Trains member `m` up to epoch `until` from its checkpoint (pulled
    /// from the artifact store first, and each new one pushed there);
    /// stops, before writing the next checkpoint, once `keep_going` says no.
    fn train(
        &self,
        m: &Member,
        until: usize,
        evaluate_test: bool,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<archsearch_train::trainer::RunResult> {
        let fp = self.task.fingerprint(&self.uid, format!("member-{}", m.id), &m.arch);
        let shared = self.shared(m.id);
        let r = self.task.train_member(
            &m.arch,
            m.seed,
            &self.dir(m.id),
            &fp,
            shared.as_ref(),
            until,
            self.config.epochs,
            Some(m.lr),
            evaluate_test,
            keep_going,
        )?;
        Ok(r)
    }

    /// The state a store's strategy state holds (the initial one before
    /// the first ask); workers write only snapshots.
    fn state_from(&self, log: &StateLog) -> Result<State> {
        match &log.since {
            StateSince::Current => Ok(self.initial_state()),
            StateSince::Snapshot(bytes, entries) if entries.is_empty() => {
                if bytes.is_empty() {
                    Ok(self.initial_state())
                } else {
                    serde_json::from_slice(bytes).context("stored PBT state")
                }
            }
            _ => bail!("the stored PBT state is a log, not a snapshot: the study was not made by PBT"),
        }
    }

    /// One worker of the population: until the run is over, takes members
    /// of the current step (or orphans of dead workers), trains each to the
    /// step's epoch and tells its fitness; the worker whose tell completes a
    /// step records it and takes the exploit step in that same transaction.
    /// Returns the outcome once the last step is told (by any worker).
    pub fn work(&self, store: &mut dyn Storage, owner: &str, stale_after: f64) -> Result<Outcome> {
        self.config.check()?;
        let beat = crate::study::Beat::default();
        let heart = store.connect_again()?;
        std::thread::scope(|s| {
            if let Some(conn) = heart {
                let beat = &beat;
                s.spawn(move || beat.run(conn, owner, Duration::from_secs_f64((stale_after / 5.0).max(0.05))));
            }
            // The heartbeat thread stops however the loop ends (a panic too).
            struct Stop<'b>(&'b std::sync::atomic::AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop = Stop(&beat.stop);
            self.work_loop(store, owner, stale_after, &beat)
        })
    }

    fn work_loop(&self, store: &mut dyn Storage, owner: &str, stale_after: f64, beat: &crate::study::Beat) -> Result<Outcome> {
        let n = self.config.population;
        let steps = self.config.steps();
        loop {
            // Members a dead worker was training: trained again, from their checkpoint.
            for t in store.claim_orphans(self.study, owner, stale_after)? {
                // Claimed orphans wait their turn here: one taken over by
                // another worker meanwhile is left to it.
                if !store.heartbeat(t.id, owner, 0.0)? {
                    continue;
                }
                let state = self.state_from(&store.strategy_state(self.study, 0)?.1)?;
                let slot =
                    *state.work.jobs.get(&t.number).ok_or_else(|| anyhow!("trial {} trains no member of the population", t.number))?;
                self.train_and_tell(store, &state, t.id, t.number, slot, owner, beat)?;
            }
            let mut handed: Option<(State, usize)> = None;
            let mut over: Option<(Member, Option<f64>)> = None;
            let mut done_without_outcome = false;
            let started = store.ask(self.study, 0, owner, &mut |log, counts| {
                let mut state = self.state_from(log).map_err(|e| format!("{e:#}"))?;
                if state.step >= steps {
                    over = state.work.outcome.clone();
                    done_without_outcome = over.is_none();
                    return Ok(None);
                }
                let Some(slot) = (0..n).find(|i| !state.work.asked.contains(i)) else { return Ok(None) };
                state.work.asked.push(slot);
                state.work.jobs.insert(counts.started, slot);
                let m = &state.members[slot];
                let launch = Launch::New(NewTrial {
                    arch: self.space.canonical(&m.arch),
                    arch_json: serde_json::to_string(&m.arch)?,
                    seed: m.seed,
                    step: Some(((state.step + 1) * self.config.interval) as u64),
                });
                let bytes = serde_json::to_vec(&state)?;
                handed = Some((state, slot));
                Ok(Some((StateWrite::snapshot(bytes), launch)))
            })?;
            match (started, handed) {
                (Some(st), Some((state, slot))) => self.train_and_tell(store, &state, st.trial_id, st.number, slot, owner, beat)?,
                _ => match over {
                    Some((best, test_accuracy)) => {
                        return Ok(Outcome { best, test_accuracy, member_epochs: n * self.config.epochs });
                    }
                    // Finished by `run` in one process, which stores no outcome: found here.
                    None if done_without_outcome => {
                        let state = self.state_from(&store.strategy_state(self.study, 0)?.1)?;
                        let (best, test_accuracy) = self.final_outcome(&state)?;
                        return Ok(Outcome { best, test_accuracy, member_epochs: n * self.config.epochs });
                    }
                    // Every member of this step is with a worker: wait for their tells.
                    None => std::thread::sleep(Duration::from_millis(200)),
                },
            }
        }
    }

    /// Trains the member at `slot` of `state` for this step as trial
    /// `number` and tells the result; the tell that completes the step
    /// records it and takes the exploit step (or, after the last step,
    /// finds the best member and its test accuracy).
    #[allow(clippy::too_many_arguments)]
    fn train_and_tell(
        &self,
        store: &mut dyn Storage,
        state: &State,
        trial: i64,
        number: u64,
        slot: usize,
        owner: &str,
        beat: &crate::study::Beat,
    ) -> Result<()> {
        let m = &state.members[slot];
        let until = (state.step + 1) * self.config.interval;
        beat.set(Some(trial));
        let start = std::time::Instant::now();
        // Each epoch's checkpoint is written only while this worker still
        // owns the trial (asked of the store itself, not just the heartbeat
        // thread's last answer): one that lost it stops at once.
        let mut still_mine = || !beat.lost() && store.heartbeat(trial, owner, start.elapsed().as_secs_f64()).unwrap_or(true);
        let trained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.train(m, until, false, &mut still_mine)));
        beat.set(None);
        if let Ok(Err(e)) = &trained {
            if matches!(e.downcast_ref(), Some(archsearch_train::TrainError::Cancelled { .. })) {
                tracing::warn!(trial = number, member = m.id, "taken over by another worker: stopped before its next checkpoint");
                return Ok(());
            }
        }
        let metrics = |lr: f64| {
            BTreeMap::from([("member".to_string(), m.id as f64), ("step".to_string(), state.step as f64), ("lr".to_string(), lr)])
        };
        let (fitness, finish) = match trained {
            Ok(Ok(r)) if r.valid_accuracy.is_finite() => {
                let mut metrics = metrics(m.lr);
                metrics.insert("resumed_from_epoch".into(), r.resumed_from as f64);
                let f = Finish { state: TrialState::Complete, value: Some(r.valid_accuracy), metrics, cost: r.seconds, error: None };
                (Ok(r.valid_accuracy), f)
            }
            other => {
                let e = match other {
                    Ok(Ok(r)) => format!("validation accuracy {}", r.valid_accuracy),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(p) => format!("training panicked: {}", crate::panic_message(p.as_ref())),
                };
                (Err(e.clone()), Finish { state: TrialState::Fail, value: None, metrics: metrics(m.lr), cost: 0.0, error: Some(e) })
            }
        };
        let steps = self.config.steps();
        let told = store.tell(self.study, trial, owner, 0, &finish, &mut |log| {
            let mut state = self.state_from(log).map_err(|e| format!("{e:#}"))?;
            let member = &mut state.members[slot];
            (member.fitness, member.error) = match &fitness {
                Ok(f) => (Some(*f), None),
                Err(e) => (None, Some(e.clone())),
            };
            state.work.jobs.remove(&number);
            if !state.work.told.contains(&slot) {
                state.work.told.push(slot);
            }
            let mut write = StateWrite::default();
            if state.work.told.len() == state.members.len() {
                // The step is complete: recorded, then exploited, in this transaction.
                let step = state.step;
                for m in &state.members {
                    write.members.push((step as u64, m.id, serde_json::to_string(&record(&self.space, m, step))?));
                }
                state.step += 1;
                state.work.asked.clear();
                state.work.told.clear();
                if state.step == steps {
                    state.work.outcome = Some(self.final_outcome(&state).map_err(|e| format!("{e:#}"))?);
                } else if self.config.variant != Variant::Random {
                    self.exploit_and_explore(&mut state).map_err(|e| format!("{e:#}"))?;
                }
            }
            write.snapshot = Some(serde_json::to_vec(&state)?);
            Ok((write, vec![]))
        });
        match told {
            Ok(_) => Ok(()),
            // Taken over after a stale heartbeat: the new owner tells it.
            Err(StoreError::NotOwner { .. } | StoreError::Finished(_)) => {
                tracing::warn!(trial = number, member = m.id, "taken over by another worker: its result is theirs");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the bottom members by children of the top ones.
    fn exploit_and_explore(&self, state: &mut State) -> Result<()> {
        let n = state.members.len();
        let k_bottom = ((n as f64) * self.config.bottom).round() as usize;
        let k_top = (((n as f64) * self.config.top).round() as usize).max(1);
        let mut order: Vec<usize> = (0..n).collect();
        let fit = |m: &Member| m.fitness.unwrap_or(f64::NEG_INFINITY);
        order.sort_by(|&a, &b| fit(&state.members[b]).total_cmp(&fit(&state.members[a])).then(a.cmp(&b)));
        let top: Vec<usize> = order[..k_top].to_vec();
        let bottom: Vec<usize> = order[n - k_bottom.min(n - k_top)..].to_vec();
        for &slot in &bottom {
            let id = state.next_id;
            state.next_id += 1;
            let child = self.make_child(state, &top, id)?;
            state.members[slot] = child;
        }
        Ok(())
    }

    fn make_child(&self, state: &mut State, top: &[usize], id: u64) -> Result<Member> {
        let rng = &mut state.rng;
        let step = state.step;
        let seed = mix_seed(self.seed, id, step as u64);
        let v = self.config.variant;
        // Parents: two distinct top members for mixing variants, one otherwise.
        let (fitter, donor) = if matches!(v, Variant::PbtNas | Variant::NoMixing | Variant::Copy | Variant::Reinit) && top.len() >= 2 {
            let mut pair: Vec<usize> = top.choose_multiple(rng, 2).copied().collect();
            let f = |i: usize| state.members[i].fitness.unwrap_or(f64::NEG_INFINITY);
            if f(pair[1]) > f(pair[0]) {
                pair.swap(0, 1);
            }
            (state.members[pair[0]].clone(), state.members[pair[1]].clone())
        } else {
            let p = state.members[top[rng.random_range(0..top.len())]].clone();
            (p.clone(), p)
        };
        let fitter_ckpt = self.read_member(&fitter)?;
        let (model, optim): (BTreeMap<_, _>, BTreeMap<_, _>) = fitter_ckpt.into_iter().partition(|(k, _)| !k.starts_with("optim."));
        let (mut arch, mut lr) = (fitter.arch.clone(), fitter.lr);
        let mut from_donor = vec![false; self.space.len()];
        let mut parents = vec![fitter.id];
        let mut tensors: BTreeMap<String, tch::Tensor>;
        let sp = self.config.shrink_perturb();
        match v {
            Variant::PbtNas | Variant::NoMixing | Variant::Copy | Variant::Reinit => {
                let donor = if v == Variant::NoMixing { fitter.clone() } else { donor };
                let (a, mask) = self.space.mix(&fitter.arch, &donor.arch, self.config.mix_probability, rng);
                (arch, from_donor) = (a, mask);
                let donor_ckpt = self.read_member(&donor)?;
                let (fresh, trainable) = self.task.fresh_tensors(&arch, seed)?;
                let mixed = mixing::mix(&fresh, &trainable, &model, &donor_ckpt, &from_donor, sp)?;
                tensors = mixed.tensors;
                if donor.id != fitter.id {
                    parents.push(donor.id);
                }
            }
            Variant::Mutation => {
                let copy = |m: &BTreeMap<String, tch::Tensor>| {
                    m.iter().filter(|(k, _)| !k.starts_with("meta.")).map(|(k, t)| (k.clone(), t.copy())).collect()
                };
                tensors = match rng.random_range(0..3) {
                    0 => copy(&model),
                    1 => {
                        let (_, trainable) = self.task.fresh_tensors(&arch, seed)?;
                        let mut noisy: BTreeMap<String, tch::Tensor> = copy(&model);
                        for (_, t) in noisy.iter_mut().filter(|(k, _)| trainable.contains(*k)) {
                            *t = &*t + archsearch_train::nn::normal(rng, &t.size(), self.config.noise_std);
                        }
                        noisy
                    }
                    _ => {
                        let (child, pos) = self.space.mutate(&fitter.arch, rng);
                        arch = child;
                        if let Some(p) = pos {
                            from_donor[p] = true;
                        }
                        // The resampled position takes fresh weights (and statistics).
                        let (fresh, trainable) = self.task.fresh_tensors(&arch, seed)?;
                        mixing::mix(&fresh, &trainable, &model, &fresh, &from_donor, ShrinkPerturb::COPY)?.tensors
                    }
                };
            }
            Variant::Pbt => {
                tensors = model.iter().filter(|(k, _)| !k.starts_with("meta.")).map(|(k, t)| (k.clone(), t.copy())).collect();
                lr = match self.config.explore {
                    Explore::Perturb => lr * if rng.random_bool(0.5) { 0.8 } else { 1.2 },
                    Explore::Resample => {
                        let [lo, hi] = self.config.lr_range;
                        (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
                    }
                };
            }
            Variant::Random => unreachable!("random search has no exploit step"),
        }
        let mut out = mixing::keep_optimizer_state(&optim, &tensors);
        for k in ["meta.epoch", "meta.step"] {
            if let Some(t) = model.get(k) {
                out.insert(k.to_string(), t.copy());
            }
        }
        out.append(&mut tensors);
        checkpoint::write(&self.dir(id), &out, &self.task.fingerprint(&self.uid, format!("member-{id}"), &arch))?;
        if let Some(shared) = self.shared(id) {
            checkpoint::push(&self.dir(id), &shared);
        }
        let origin_of = |d: bool| match (d, v) {
            (false, _) => Origin::Copied,
            (true, Variant::Mutation) => Origin::Fresh,
            (true, _) => match sp {
                ShrinkPerturb::COPY => Origin::Donated,
                ShrinkPerturb::REINIT => Origin::Fresh,
                _ => Origin::ShrinkPerturbed,
            },
        };
        let donor_id = *parents.last().unwrap();
        let lineage = from_donor
            .iter()
            .map(|&d| Lineage { parent: if d && v != Variant::Mutation { donor_id } else { fitter.id }, origin: origin_of(d) })
            .collect();
        let event = match v {
            Variant::Pbt => "exploit",
            Variant::Mutation => "mutation",
            _ => "child",
        };
        Ok(Member { id, arch, lr, seed, fitness: None, error: None, event: event.into(), born_at_step: step, parents, lineage })
    }
}

/// Trains every member up to epoch `until`, `run.workers` at a time.
fn train_all(run: &Run<'_>, members: &mut [Member], until: usize) {
    let next = AtomicUsize::new(0);
    let results: Vec<(usize, Result<f64, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..run.workers.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(m) = members.get(i) else { break };
                        // A panic in training (libtorch errors panic in tch) fails the member.
                        let trained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.train(m, until, false, &mut || true)));
                        let r = match trained {
                            Ok(r) => r.map(|r| r.valid_accuracy).map_err(|e| format!("{e:#}")),
                            Err(p) => Err(format!("training panicked: {}", crate::panic_message(p.as_ref()))),
                        };
                        out.push((i, r));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("training thread")).collect()
    });
    for (i, r) in results {
        match r {
            Ok(acc) => (members[i].fitness, members[i].error) = (Some(acc), None),
            Err(e) => (members[i].fitness, members[i].error) = (None, Some(e)),
        }
    }
}

/// The JSON record of a member at a step.
fn record(space: &Space, m: &Member, step: usize) -> serde_json::Value {
    serde_json::json!({
        "step": step,
        "member": m.id,
        "arch": space.canonical(&m.arch),
        "choices": m.arch.choices,
        "lr": m.lr,
        "fitness": m.fitness,
        "error": m.error,
        "event": m.event,
        "born_at_step": m.born_at_step,
        "parents": m.parents,
        "lineage": m.lineage,
    })
}

/// Runs (or resumes) the PBT study of `config` (whose `[strategy]` is
/// `pbt` with settings `pbt`) in the store at `url`, in this process;
/// returns its outcome and the wall seconds this process spent.
pub fn run_study(
    config: &crate::config::Config,
    pbt: &Config,
    url: &str,
    device: Option<archsearch_train::DeviceChoice>,
    workers: Option<usize>,
    quiet: bool,
) -> Result<(Outcome, f64)> {
    study(config, pbt, url, device, workers, quiet, false)
}

/// Joins the PBT study of `config` in the store at `url` as one of many
/// workers (see [`Run::work`]); returns the outcome once the population has
/// finished, and the wall seconds this process spent.
pub fn work_study(
    config: &crate::config::Config,
    pbt: &Config,
    url: &str,
    device: Option<archsearch_train::DeviceChoice>,
    quiet: bool,
) -> Result<(Outcome, f64)> {
    study(config, pbt, url, device, Some(1), quiet, true)
}

fn study(
    config: &crate::config::Config,
    pbt: &Config,
    url: &str,
    device: Option<archsearch_train::DeviceChoice>,
    workers: Option<usize>,
    quiet: bool,
    as_worker: bool,
) -> Result<(Outcome, f64)> {
    pbt.check().context("[strategy]")?;
    let crate::config::TaskConfig::Train(task_cfg) = &config.task else { bail!("[strategy] kind = \"pbt\" needs a training task") };
    let space = config.space()?;
    let shown = archsearch_store::shown_url(url);
    let mut store = archsearch_store::open(url)?;
    // A study that exists must be this config's; everything is checked
    // (and the data read) before a study row is written.
    let config = match store.study(config.name()) {
        Ok(rec) => {
            let stored: crate::config::Config =
                toml::from_str(&rec.config).with_context(|| format!("stored config of study `{}`", rec.name))?;
            crate::config::reconcile(&stored, config).with_context(|| format!("study `{}` exists in {shown}", rec.name))?
        }
        Err(archsearch_store::StoreError::NoStudy(_)) => config.clone(),
        Err(e) => return Err(e.into()),
    };
    let task = TrainTask::new(task_cfg, space.clone(), task_cfg.proxy.clone(), false, device)?;
    let artifacts = match &config.study.artifacts {
        Some(a) => Some(crate::artifacts::open(a).context("[study] artifacts")?),
        None => None,
    };
    let new = NewStudy { name: config.name().into(), config: config.to_toml(), seed: config.study.seed, direction: config.study.direction };
    let (record, _) = store.open_study(&new)?;
    let root = crate::study::checkpoint_dir(url, &record).with_context(|| format!("{shown} keeps no checkpoints"))?;
    let workers = workers.or(config.study.workers).unwrap_or(1).max(1);
    crate::config::check_workers(workers)?;
    let mut run = Run {
        config: pbt.clone(),
        space: space.clone(),
        task: &task,
        study: record.id,
        name: record.name.clone(),
        uid: record.uid.clone(),
        seed: record.seed,
        workers,
        root,
        artifacts,
    };
    if as_worker && archsearch_store::is_postgres(url) && run.artifacts.is_none() {
        bail!(
            "PBT workers on a PostgreSQL study need `[study] artifacts` (or --artifacts): members' checkpoints pass from worker \
             to worker, and a child must start from its parents' weights; run the population in one process with `run` instead"
        );
    }
    let start = std::time::Instant::now();
    let out = if as_worker {
        let owner = archsearch_store::owner_id(rand::random());
        let out = run.work(store.as_mut(), &owner, config.study.stale_after);
        archsearch_store::release_owner(&owner);
        out?
    } else {
        run.run(store.as_mut(), &mut |step, members| {
            if !quiet {
                let best = members.iter().filter_map(|m| m.fitness).fold(f64::NEG_INFINITY, f64::max);
                eprintln!("step {step}: best validation accuracy {best:.2} ({:.0} s)", start.elapsed().as_secs_f64());
            }
        })?
    };
    let wall = start.elapsed().as_secs_f64();
    if !quiet {
        println!(
            "pbt `{}` ({:?}): best member {} — {} — validation {:.2}, test {}",
            record.name,
            pbt.variant,
            out.best.id,
            space.canonical(&out.best.arch),
            out.best.fitness.unwrap_or(f64::NAN),
            out.test_accuracy.map(|t| format!("{t:.2}")).unwrap_or_else(|| "-".into())
        );
        println!("compute: {} member-epochs; wall {wall:.0} s", out.member_epochs);
    }
    Ok((out, wall))
}

/// One row of `archsearch compare`.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub variant: Variant,
    pub seeds: u64,
    /// Mean and std of the test accuracy of each run's best member.
    pub mean: f64,
    pub std: f64,
    /// Member-epochs each run trained.
    pub member_epochs: usize,
    /// Mean wall seconds per run (0 for runs already finished in the store).
    pub wall_seconds: f64,
}

/// Runs every variant for seeds `seed..seed + seeds` of `config` (each run a
/// study `NAME-VARIANT-sSEED` in the store, so an interrupted comparison
/// resumes) and summarises the best members' test accuracy.
pub fn compare(
    config: &crate::config::Config,
    variants: &[Variant],
    seeds: u64,
    url: &str,
    device: Option<archsearch_train::DeviceChoice>,
    workers: Option<usize>,
) -> Result<Vec<CompareRow>> {
    let crate::registry::StrategyConfig::Pbt(base) = &config.strategy else { bail!("compare needs `[strategy] kind = \"pbt\"`") };
    let mut rows = Vec::new();
    for &variant in variants {
        let mut tests = Vec::new();
        let mut walls = Vec::new();
        let mut epochs = 0;
        for s in 0..seeds {
            let mut c = config.clone();
            let p = Config { variant, ..base.clone() };
            c.strategy = crate::registry::StrategyConfig::Pbt(p.clone());
            c.study.seed = config.study.seed + s;
            let v = serde_json::to_value(variant)?;
            c.study.name = Some(format!("{}-{}-s{}", config.name(), v.as_str().unwrap_or("variant"), c.study.seed));
            let (out, wall) = run_study(&c, &p, url, device, workers, true)?;
            eprintln!(
                "{} seed {}: test {:.2} ({wall:.0} s)",
                v.as_str().unwrap_or(""),
                c.study.seed,
                out.test_accuracy.unwrap_or(f64::NAN)
            );
            tests.push(out.test_accuracy.unwrap_or(f64::NAN));
            walls.push(wall);
            epochs = out.member_epochs;
        }
        rows.push(CompareRow {
            variant,
            seeds,
            mean: archsearch_core::stats::mean(&tests),
            std: archsearch_core::stats::std(&tests),
            member_epochs: epochs,
            wall_seconds: archsearch_core::stats::mean(&walls),
        });
    }
    Ok(rows)
}
