//! The PostgreSQL backend: one study store shared by workers on many
//! machines (`postgres://user@host:port/db`).
//!
//! The same schema as the SQLite store, in a PostgreSQL schema of its own
//! (`archsearch`), so that a database shared with other programs keeps its
//! tables apart. A database whose `archsearch` schema is not an archsearch
//! store is refused untouched.
//!
//! Concurrency: every ask, tell, claim, prune and population step locks the
//! study's row (`SELECT … FOR UPDATE`) first, then the trials it changes, so
//! a study's strategy state and counters change one transaction at a time,
//! as on SQLite, locks are always taken in one order (no deadlocks), and the
//! trials of other studies proceed. Claiming orphans also locks the RUNNING
//! trials it looks at (`FOR UPDATE SKIP LOCKED`): a trial is never handed to
//! two workers. Heartbeats and every timestamp use the database server's clock
//! (`clock_timestamp()`), so workers whose clocks disagree still agree on
//! which heartbeat is stale.

use std::collections::{BTreeMap, HashMap};

use archsearch_core::{Direction, TrialState};
use std::cell::RefCell;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Statement, Transaction};

use crate::{
    owner_alive, AskFn, Counts, Finish, Launch, MemberRecord, NewStudy, Result, Started, StateLog, StateSince, StateWrite, Storage,
    StoreError, StudyRecord, TellFn, TrialRecord,
};

/// The schema tag of this version (the same logical schema as SQLite's).
const SCHEMA_TAG: &str = "archsearch-3";

/// Migrations from older tags, oldest first: `(from, sql)`. The first
/// PostgreSQL store was written at `archsearch-3`, so there are none yet;
/// a later schema adds its step here, and opening runs every step after the
/// stored tag in one transaction, as the SQLite backend does.
const MIGRATIONS: &[(&str, &str)] = &[];

/// The current schema. Unix seconds as `double precision`, as on SQLite.
const SCHEMA: &str = r#"
CREATE TABLE archsearch.studies (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    seed BIGINT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('maximize', 'minimize')),
    version TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    uid TEXT NOT NULL,
    state_version BIGINT NOT NULL DEFAULT 0,
    snapshot_version BIGINT NOT NULL DEFAULT 0,
    snapshot_bytes BIGINT NOT NULL DEFAULT 0,
    log_bytes BIGINT NOT NULL DEFAULT 0,
    n_started BIGINT NOT NULL DEFAULT 0,
    n_finished BIGINT NOT NULL DEFAULT 0,
    total_cost DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE archsearch.strategy_snapshots (
    study_id BIGINT PRIMARY KEY REFERENCES archsearch.studies(id),
    state BYTEA NOT NULL
);
CREATE TABLE archsearch.strategy_log (
    study_id BIGINT NOT NULL REFERENCES archsearch.studies(id),
    version BIGINT NOT NULL,
    entry BYTEA NOT NULL,
    PRIMARY KEY (study_id, version)
);
CREATE TABLE archsearch.trials (
    id BIGSERIAL PRIMARY KEY,
    study_id BIGINT NOT NULL REFERENCES archsearch.studies(id),
    number BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('RUNNING', 'PAUSED', 'COMPLETE', 'FAIL', 'PRUNED')),
    arch TEXT NOT NULL,
    arch_json TEXT NOT NULL,
    seed BIGINT NOT NULL,
    value DOUBLE PRECISION,
    metrics TEXT NOT NULL DEFAULT '{}',
    cost DOUBLE PRECISION NOT NULL DEFAULT 0,
    error TEXT,
    started_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    owner TEXT NOT NULL,
    heartbeat DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    step BIGINT,
    attempt_cost DOUBLE PRECISION NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    released BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (study_id, number)
);
CREATE INDEX trials_running ON archsearch.trials (study_id) WHERE state = 'RUNNING';
CREATE INDEX trials_paused ON archsearch.trials (study_id) WHERE state = 'PAUSED';
CREATE TABLE archsearch.trial_values (
    trial_id BIGINT NOT NULL REFERENCES archsearch.trials(id),
    step BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (trial_id, step)
);
CREATE TABLE archsearch.members (
    study_id BIGINT NOT NULL REFERENCES archsearch.studies(id),
    step BIGINT NOT NULL,
    member BIGINT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (study_id, step, member)
);
CREATE TABLE archsearch.study_attrs (
    study_id BIGINT NOT NULL REFERENCES archsearch.studies(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (study_id, key)
);
CREATE FUNCTION archsearch.finished_trials_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state NOT IN ('RUNNING', 'PAUSED') THEN
        RAISE EXCEPTION 'finished trials are immutable (trial id %)', OLD.id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER finished_trials_are_immutable BEFORE UPDATE ON archsearch.trials
    FOR EACH ROW EXECUTE FUNCTION archsearch.finished_trials_are_immutable();
CREATE FUNCTION archsearch.finished_trials_take_no_values() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT state FROM archsearch.trials WHERE id = NEW.trial_id) <> 'RUNNING' THEN
        RAISE EXCEPTION 'finished trials are immutable (trial id %)', NEW.trial_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER finished_trials_take_no_values BEFORE INSERT OR UPDATE ON archsearch.trial_values
    FOR EACH ROW EXECUTE FUNCTION archsearch.finished_trials_take_no_values();
"#;

/// The server's clock in Unix seconds, as SQL.
/// Every session's settings: the server drops a connection whose peer is
/// silent for 2 minutes (a machine gone), and ends a transaction left idle
/// for 10 (a process stopped while holding the study row lock).
const SESSION: &str = "SET tcp_keepalives_idle = 60; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 6; \
                       SET idle_in_transaction_session_timeout = '10min'";

const NOW: &str = "extract(epoch from clock_timestamp())::double precision";

/// Prepared statements of one connection, by SQL text.
type Statements = RefCell<HashMap<String, Statement>>;

/// A transaction whose statements are prepared once per connection.
struct Tx<'a> {
    tx: Transaction<'a>,
    statements: &'a Statements,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

impl<'a> Tx<'a> {
    fn begin(client: &'a mut Client, statements: &'a Statements) -> std::result::Result<Self, postgres::Error> {
        Ok(Tx { tx: client.transaction()?, statements })
    }

    fn statement(&mut self, sql: &str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.borrow_mut().insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn execute(&mut self, sql: &str, params: &Params<'_>) -> std::result::Result<u64, postgres::Error> {
        let s = self.statement(sql)?;
        self.tx.execute(&s, params)
    }

    fn query(&mut self, sql: &str, params: &Params<'_>) -> std::result::Result<Vec<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.tx.query(&s, params)
    }

    fn query_one(&mut self, sql: &str, params: &Params<'_>) -> std::result::Result<Row, postgres::Error> {
        let s = self.statement(sql)?;
        self.tx.query_one(&s, params)
    }

    fn query_opt(&mut self, sql: &str, params: &Params<'_>) -> std::result::Result<Option<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.tx.query_opt(&s, params)
    }

    fn commit(self) -> std::result::Result<(), postgres::Error> {
        self.tx.commit()
    }
}

const TRIAL_COLUMNS: &str =
    "id, number, state, arch, arch_json, seed, value, metrics, cost, error, started_at, finished_at, owner, attempts, step, heartbeat, crashes";

const STUDY_COLUMNS: &str = "id, uid, name, config, seed, direction, version, created_at, n_started, n_finished, total_cost";

/// A PostgreSQL study store: one connection.
pub struct PostgresStorage {
    /// In a cell: the trait's reads take `&self`, a connection needs `&mut`.
    client: RefCell<Client>,
    /// This connection's prepared statements, by SQL text: each statement
    /// is parsed once per connection, not once per call.
    statements: Statements,
    /// The URL it was opened with (for new connections).
    url: String,
    /// The URL without its password (for messages).
    shown: String,
    read_only: bool,
}

/// A URL with its password (if any) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (auth, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match auth.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user.to_string(), |(u, _)| format!("{u}:***"));
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

fn row_to_study(r: &Row) -> StudyRecord {
    let dir: String = r.get(5);
    StudyRecord {
        id: r.get(0),
        uid: r.get(1),
        name: r.get(2),
        config: r.get(3),
        seed: r.get::<_, i64>(4) as u64,
        direction: if dir == "minimize" { Direction::Minimize } else { Direction::Maximize },
        version: r.get(6),
        created_at: r.get(7),
        counts: Counts { started: r.get::<_, i64>(8) as u64, finished: r.get::<_, i64>(9) as u64, cost: r.get(10) },
    }
}

fn row_to_trial(r: &Row) -> TrialRecord {
    let state: String = r.get(2);
    let metrics: String = r.get(7);
    TrialRecord {
        id: r.get(0),
        number: r.get::<_, i64>(1) as u64,
        state: TrialState::parse(&state).unwrap_or(TrialState::Fail),
        arch: r.get(3),
        arch_json: r.get(4),
        seed: r.get::<_, i64>(5) as u64,
        value: r.get(6),
        metrics: crate::metrics::from_json(&metrics).unwrap_or_default(),
        cost: r.get(8),
        error: r.get(9),
        started_at: r.get(10),
        finished_at: r.get(11),
        owner: r.get(12),
        attempts: r.get::<_, i32>(13) as u32,
        step: r.get::<_, Option<i64>>(14).map(|s| s as u64),
        heartbeat: r.get(15),
        crashes: r.get::<_, i32>(16) as u32,
        intermediate: Vec::new(),
    }
}

fn dir_str(d: Direction) -> &'static str {
    match d {
        Direction::Maximize => "maximize",
        Direction::Minimize => "minimize",
    }
}

/// A random study id (32 hex digits).
fn new_uid() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl PostgresStorage {
    /// Connects to the database at `url` and creates (or migrates) the
    /// store's schema. A database whose `archsearch` schema is not an
    /// archsearch store is refused and left untouched.
    pub fn open(url: &str) -> Result<Self> {
        let mut s = Self::connect(url, false)?;
        s.create_or_migrate()?;
        Ok(s)
    }

    /// Connects for reading only: nothing is created, migrated or written,
    /// and the session itself is read-only.
    pub fn open_read_only(url: &str) -> Result<Self> {
        let mut s = Self::connect(url, true)?;
        let shown = s.shown.clone();
        let c = s.client.get_mut();
        c.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").map_err(|e| StoreError::backend(&shown, e))?;
        match schema_tag(c, &shown)? {
            None => Err(StoreError::Foreign { path: s.shown.clone(), reason: "the database holds no archsearch store".into() }),
            Some(t) if t == SCHEMA_TAG => Ok(s),
            Some(t) => Err(StoreError::Corrupt(format!("{}: unknown schema `{t}` (a newer archsearch?)", s.shown))),
        }
    }

    fn connect(url: &str, read_only: bool) -> Result<Self> {
        let shown = redact(url);
        let err = |e| StoreError::backend(&shown, e);
        let mut config: postgres::Config = url.parse().map_err(err)?;
        // A worker whose server (or network) is gone finds out in about two
        // minutes rather than the default two hours (unless the URL says).
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(60));
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(Duration::from_secs(10));
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(6);
        }
        let mut client = config.connect(NoTls).map_err(err)?;
        // And the server about a dead or hung worker: its transaction, and
        // the study row it locks, end within minutes, not hours. (A worker's
        // transactions are short; the longest, a PBT exploit step, mixes a
        // few checkpoints.)
        client.batch_execute(SESSION).map_err(err)?;
        Ok(PostgresStorage { client: RefCell::new(client), statements: Statements::default(), url: url.to_string(), shown, read_only })
    }

    fn err(&self, e: postgres::Error) -> StoreError {
        StoreError::backend(&self.shown, e)
    }

    fn refuse_writes(&self) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly(self.shown.clone()));
        }
        Ok(())
    }

    /// Creates the schema, or migrates an older one, in one transaction that
    /// holds an advisory lock: workers starting together create it once.
    fn create_or_migrate(&mut self) -> Result<()> {
        let shown = self.shown.clone();
        let err = |e| StoreError::backend(&shown, e);
        let mut tx = self.client.get_mut().transaction().map_err(err)?;
        // 0x61726368 = "arch": every archsearch process takes the same lock.
        tx.execute("SELECT pg_advisory_xact_lock(1634886504)", &[]).map_err(err)?;
        match schema_tag(&mut tx, &shown)?.as_deref() {
            None => {
                tx.batch_execute(
                    "CREATE SCHEMA IF NOT EXISTS archsearch; CREATE TABLE archsearch.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
                )
                .map_err(err)?;
                tx.batch_execute(SCHEMA).map_err(err)?;
                tx.execute("INSERT INTO archsearch.meta (key, value) VALUES ('schema', $1)", &[&SCHEMA_TAG]).map_err(err)?;
            }
            Some(t) if t == SCHEMA_TAG => {}
            Some(t) => match MIGRATIONS.iter().position(|(from, _)| *from == t) {
                Some(first) => {
                    tracing::info!(store = %shown, "migrating the study store from schema {t} to {SCHEMA_TAG}");
                    for (_, step) in &MIGRATIONS[first..] {
                        tx.batch_execute(step).map_err(err)?;
                    }
                    tx.execute("UPDATE archsearch.meta SET value = $1 WHERE key = 'schema'", &[&SCHEMA_TAG]).map_err(err)?;
                }
                None => return Err(StoreError::Corrupt(format!("{shown}: unknown schema `{t}` (a newer archsearch?)"))),
            },
        }
        tx.commit().map_err(err)
    }

    /// The connection, for the trait's `&self` (read) methods.
    fn reader(&self) -> std::cell::RefMut<'_, Client> {
        self.client.borrow_mut()
    }
}

/// The stored schema tag: `None` when there is no `archsearch` schema (or
/// an empty one); an error when there is one that is not an archsearch store.
fn schema_tag(c: &mut impl GenericClient, shown: &str) -> Result<Option<String>> {
    let err = |e| StoreError::backend(shown, e);
    let tables: Vec<String> = c
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'archsearch' ORDER BY 1", &[])
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let foreign = |reason: String| Err(StoreError::Foreign { path: format!("{shown} (schema `archsearch`)"), reason });
    if tables.is_empty() {
        return Ok(None);
    }
    if !tables.iter().any(|t| t == "meta") {
        let names: Vec<&str> = tables.iter().take(5).map(|s| s.as_str()).collect();
        return foreign(format!("it holds another program's tables ({})", names.join(", ")));
    }
    let tag: Option<String> = c.query_opt("SELECT value FROM archsearch.meta WHERE key = 'schema'", &[]).map_err(err)?.map(|r| r.get(0));
    match tag {
        Some(t) if t.starts_with("archsearch-") => Ok(Some(t)),
        _ => foreign("its `meta` table carries no archsearch schema tag".into()),
    }
}

/// The state version and what changed in it since `known`.
fn state_since(tx: &mut Tx<'_>, study: i64, known: u64) -> std::result::Result<(u64, StateLog), postgres::Error> {
    let r =
        tx.query_one("SELECT state_version, snapshot_version, log_bytes, snapshot_bytes FROM archsearch.studies WHERE id = $1", &[&study])?;
    let (version, snapshot_version) = (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64);
    let (log_bytes, snapshot_bytes) = (r.get::<_, i64>(2) as u64, r.get::<_, i64>(3) as u64);
    let mut entries = |after: u64| -> std::result::Result<Vec<Vec<u8>>, postgres::Error> {
        Ok(tx
            .query(
                "SELECT entry FROM archsearch.strategy_log WHERE study_id = $1 AND version > $2 ORDER BY version",
                &[&study, &(after as i64)],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    };
    let since = if known == version {
        StateSince::Current
    } else if known >= snapshot_version && known < version {
        StateSince::Entries(entries(known)?)
    } else {
        let e = entries(snapshot_version)?;
        let snapshot: Option<Vec<u8>> =
            tx.query_opt("SELECT state FROM archsearch.strategy_snapshots WHERE study_id = $1", &[&study])?.map(|r| r.get(0));
        StateSince::Snapshot(snapshot.unwrap_or_default(), e)
    };
    Ok((version, StateLog { version, since, log_bytes, snapshot_bytes }))
}

/// Writes a transaction's state change at `version + 1`.
fn write_state(tx: &mut Tx<'_>, study: i64, version: u64, w: &StateWrite) -> std::result::Result<(), postgres::Error> {
    let next = (version + 1) as i64;
    for (step, member, record) in &w.members {
        tx.execute(
            "INSERT INTO archsearch.members (study_id, step, member, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT (study_id, step, member) DO UPDATE SET record = EXCLUDED.record",
            &[&study, &(*step as i64), &(*member as i64), record],
        )?;
    }
    match &w.snapshot {
        Some(state) => {
            tx.execute("DELETE FROM archsearch.strategy_log WHERE study_id = $1", &[&study])?;
            tx.execute(
                "INSERT INTO archsearch.strategy_snapshots (study_id, state) VALUES ($1, $2)
                 ON CONFLICT (study_id) DO UPDATE SET state = EXCLUDED.state",
                &[&study, state],
            )?;
            tx.execute(
                "UPDATE archsearch.studies SET state_version = $2, snapshot_version = $2, snapshot_bytes = $3, log_bytes = 0 WHERE id = $1",
                &[&study, &next, &(state.len() as i64)],
            )?;
        }
        None => {
            tx.execute("INSERT INTO archsearch.strategy_log (study_id, version, entry) VALUES ($1, $2, $3)", &[&study, &next, &w.entry])?;
            tx.execute(
                "UPDATE archsearch.studies SET state_version = $2, log_bytes = log_bytes + $3 WHERE id = $1",
                &[&study, &next, &(w.entry.len() as i64)],
            )?;
        }
    }
    Ok(())
}

/// Locks the study's row for the rest of the transaction (one ask, tell or
/// step of a study at a time).
fn lock_study(tx: &mut Tx<'_>, study: i64) -> std::result::Result<bool, postgres::Error> {
    Ok(tx.query_opt("SELECT 1 FROM archsearch.studies WHERE id = $1 FOR UPDATE", &[&study])?.is_some())
}

/// Locks a trial and checks that `owner` owns it and that it runs.
fn owned(tx: &mut Tx<'_>, trial: i64, owner: &str, shown: &str) -> Result<()> {
    let row = tx
        .query_opt("SELECT state, owner FROM archsearch.trials WHERE id = $1 FOR UPDATE", &[&trial])
        .map_err(|e| StoreError::backend(shown, e))?;
    match row.map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))) {
        None => Err(StoreError::NoTrial(trial)),
        Some((_, o)) if o != owner => Err(StoreError::NotOwner { trial, owner: o }),
        Some((state, _)) if state != "RUNNING" => Err(StoreError::Finished(trial)),
        Some(_) => Ok(()),
    }
}

impl Storage for PostgresStorage {
    fn open_study(&mut self, new: &NewStudy) -> Result<(StudyRecord, bool)> {
        self.refuse_writes()?;
        let n = self
            .client
            .get_mut()
            .execute(
                &format!(
                    "INSERT INTO archsearch.studies (name, config, seed, direction, version, created_at, uid)
                     VALUES ($1, $2, $3, $4, $5, {NOW}, $6) ON CONFLICT (name) DO NOTHING"
                ),
                &[&new.name, &new.config, &(new.seed as i64), &dir_str(new.direction), &env!("CARGO_PKG_VERSION"), &new_uid()],
            )
            .map_err(|e| self.err(e))?;
        Ok((self.study(&new.name)?, n == 1))
    }

    fn set_config(&mut self, study: i64, config: &str) -> Result<()> {
        self.refuse_writes()?;
        self.client
            .get_mut()
            .execute("UPDATE archsearch.studies SET config = $2 WHERE id = $1", &[&study, &config])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn study(&self, name: &str) -> Result<StudyRecord> {
        // `&self` methods read on a fresh statement of the same connection.
        let mut c = self.reader();
        let row =
            c.query_opt(&format!("SELECT {STUDY_COLUMNS} FROM archsearch.studies WHERE name = $1"), &[&name]).map_err(|e| self.err(e))?;
        row.as_ref().map(row_to_study).ok_or_else(|| StoreError::NoStudy(name.to_string()))
    }

    fn studies(&self) -> Result<Vec<StudyRecord>> {
        let mut c = self.reader();
        let rows = c.query(&format!("SELECT {STUDY_COLUMNS} FROM archsearch.studies ORDER BY id"), &[]).map_err(|e| self.err(e))?;
        Ok(rows.iter().map(row_to_study).collect())
    }

    fn ask(&mut self, study: i64, known_version: u64, owner: &str, f: &mut AskFn<'_>) -> Result<Option<Started>> {
        self.refuse_writes()?;
        let shown = self.shown.clone();
        let err = |e| StoreError::backend(&shown, e);
        let mut tx = Tx::begin(self.client.get_mut(), &self.statements).map_err(err)?;
        if !lock_study(&mut tx, study).map_err(err)? {
            return Err(StoreError::NoStudy(format!("id {study}")));
        }
        let (version, log) = state_since(&mut tx, study, known_version).map_err(err)?;
        let r = tx.query_one("SELECT n_started, n_finished, total_cost FROM archsearch.studies WHERE id = $1", &[&study]).map_err(err)?;
        let counts = Counts { started: r.get::<_, i64>(0) as u64, finished: r.get::<_, i64>(1) as u64, cost: r.get(2) };
        let Some((write, launch)) = f(&log, &counts).map_err(StoreError::Callback)? else {
            return Ok(None);
        };
        let (trial_id, number, new_trials) = match launch {
            Launch::New(trial) => {
                let id: i64 = tx
                    .query_one(
                        &format!(
                            "INSERT INTO archsearch.trials (study_id, number, state, arch, arch_json, seed, started_at, owner, heartbeat, step)
                             VALUES ($1, $2, 'RUNNING', $3, $4, $5, {NOW}, $6, {NOW}, $7) RETURNING id"
                        ),
                        &[
                            &study,
                            &(counts.started as i64),
                            &trial.arch,
                            &trial.arch_json,
                            &(trial.seed as i64),
                            &owner,
                            &trial.step.map(|s| s as i64),
                        ],
                    )
                    .map_err(err)?
                    .get(0);
                (id, counts.started, 1i64)
            }
            Launch::Resume { number, step } => {
                let id: Option<i64> = tx
                    .query_opt(
                        &format!(
                            "UPDATE archsearch.trials SET state = 'RUNNING', owner = $3, heartbeat = {NOW}, step = $4, attempt_cost = 0
                             WHERE study_id = $1 AND number = $2 AND state = 'PAUSED' RETURNING id"
                        ),
                        &[&study, &(number as i64), &owner, &(step as i64)],
                    )
                    .map_err(err)?
                    .map(|r| r.get(0));
                (id.ok_or(StoreError::NotPaused(number, "resumed"))?, number, 0)
            }
        };
        tx.execute("UPDATE archsearch.studies SET n_started = n_started + $2 WHERE id = $1", &[&study, &new_trials]).map_err(err)?;
        write_state(&mut tx, study, version, &write).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Some(Started { trial_id, number, state_version: version + 1 }))
    }

    fn tell(&mut self, study: i64, trial: i64, owner: &str, known_version: u64, finish: &Finish, f: &mut TellFn<'_>) -> Result<u64> {
        self.refuse_writes()?;
        let shown = self.shown.clone();
        let err = |e| StoreError::backend(&shown, e);
        let mut tx = Tx::begin(self.client.get_mut(), &self.statements).map_err(err)?;
        if !lock_study(&mut tx, study).map_err(err)? {
            return Err(StoreError::NoStudy(format!("id {study}")));
        }
        owned(&mut tx, trial, owner, &shown)?;
        let (version, log) = state_since(&mut tx, study, known_version).map_err(err)?;
        let (write, prune) = f(&log).map_err(StoreError::Callback)?;
        let metrics = crate::metrics::to_json(&finish.metrics);
        // As on SQLite: a value is kept only when finite.
        let value = finish.value.filter(|v| v.is_finite());
        let paused = finish.state == TrialState::Paused;
        let finished_at = if paused { "NULL".to_string() } else { NOW.to_string() };
        tx.execute(
            &format!(
                "UPDATE archsearch.trials SET state = $2, value = $3, metrics = $4, cost = cost + $5, error = $6,
                 finished_at = {finished_at}, attempt_cost = 0 WHERE id = $1"
            ),
            &[&trial, &finish.state.as_str(), &value, &metrics, &finish.cost, &finish.error],
        )
        .map_err(err)?;
        let mut newly_pruned = 0i64;
        for &number in &prune {
            let n = tx
                .execute(
                    &format!(
                        "UPDATE archsearch.trials SET state = 'PRUNED', finished_at = {NOW}
                         WHERE study_id = $1 AND number = $2 AND state = 'PAUSED'"
                    ),
                    &[&study, &(number as i64)],
                )
                .map_err(err)?;
            if n == 0 {
                // Already pruned (by another worker ending the study) is fine.
                let state: Option<String> = tx
                    .query_opt("SELECT state FROM archsearch.trials WHERE study_id = $1 AND number = $2", &[&study, &(number as i64)])
                    .map_err(err)?
                    .map(|r| r.get(0));
                if state.as_deref() != Some("PRUNED") {
                    return Err(StoreError::NotPaused(number, "pruned"));
                }
            }
            newly_pruned += n as i64;
        }
        let finished = newly_pruned + i64::from(!paused);
        tx.execute(
            "UPDATE archsearch.studies SET n_finished = n_finished + $3, total_cost = total_cost + $2 WHERE id = $1",
            &[&study, &finish.cost, &finished],
        )
        .map_err(err)?;
        write_state(&mut tx, study, version, &write).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(version + 1)
    }

    fn prune_paused(&mut self, study: i64) -> Result<u64> {
        self.refuse_writes()?;
        let shown = self.shown.clone();
        let err = |e| StoreError::backend(&shown, e);
        let mut tx = Tx::begin(self.client.get_mut(), &self.statements).map_err(err)?;
        lock_study(&mut tx, study).map_err(err)?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE archsearch.trials SET state = 'PRUNED', finished_at = {NOW} WHERE study_id = $1 AND state = 'PAUSED'
                     AND NOT EXISTS (SELECT 1 FROM archsearch.trials WHERE study_id = $1 AND state = 'RUNNING')"
                ),
                &[&study],
            )
            .map_err(err)?;
        tx.execute("UPDATE archsearch.studies SET n_finished = n_finished + $2 WHERE id = $1", &[&study, &(n as i64)]).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(n)
    }

    fn report(&mut self, trial: i64, owner: &str, step: u64, value: f64) -> Result<()> {
        self.refuse_writes()?;
        let shown = self.shown.clone();
        let err = |e| StoreError::backend(&shown, e);
        let mut tx = Tx::begin(self.client.get_mut(), &self.statements).map_err(err)?;
        owned(&mut tx, trial, owner, &shown)?;
        tx.execute(
            "INSERT INTO archsearch.trial_values (trial_id, step, value) VALUES ($1, $2, $3)
             ON CONFLICT (trial_id, step) DO UPDATE SET value = EXCLUDED.value",
            &[&trial, &(step as i64), &value],
        )
        .map_err(err)?;
        tx.execute(&format!("UPDATE archsearch.trials SET heartbeat = {NOW} WHERE id = $1"), &[&trial]).map_err(err)?;
        tx.commit().map_err(err)
    }

    fn heartbeat(&mut self, trial: i64, owner: &str, attempt_cost: f64) -> Result<bool> {
        self.refuse_writes()?;
        let n = self
            .client
            .get_mut()
            .execute(
                &format!(
                    "UPDATE archsearch.trials SET heartbeat = {NOW}, attempt_cost = $3 WHERE id = $1 AND owner = $2 AND state = 'RUNNING'"
                ),
                &[&trial, &owner, &attempt_cost],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    fn trials(&self, study: i64) -> Result<Vec<TrialRecord>> {
        let mut c = self.reader();
        let mut tx = Tx::begin(&mut c, &self.statements).map_err(|e| self.err(e))?;
        let mut trials: Vec<TrialRecord> = tx
            .query(&format!("SELECT {TRIAL_COLUMNS} FROM archsearch.trials WHERE study_id = $1 ORDER BY number"), &[&study])
            .map_err(|e| self.err(e))?
            .iter()
            .map(row_to_trial)
            .collect();
        let mut values: BTreeMap<i64, Vec<(u64, f64)>> = BTreeMap::new();
        for r in tx
            .query(
                "SELECT v.trial_id, v.step, v.value FROM archsearch.trial_values v JOIN archsearch.trials t ON t.id = v.trial_id
                 WHERE t.study_id = $1 ORDER BY v.trial_id, v.step",
                &[&study],
            )
            .map_err(|e| self.err(e))?
        {
            values.entry(r.get(0)).or_default().push((r.get::<_, i64>(1) as u64, r.get(2)));
        }
        tx.commit().map_err(|e| self.err(e))?;
        for t in &mut trials {
            if let Some(v) = values.remove(&t.id) {
                t.intermediate = v;
            }
        }
        Ok(trials)
    }

    fn trial(&self, study: i64, number: u64) -> Result<TrialRecord> {
        let mut c = self.reader();
        c.query_opt(
            &format!("SELECT {TRIAL_COLUMNS} FROM archsearch.trials WHERE study_id = $1 AND number = $2"),
            &[&study, &(number as i64)],
        )
        .map_err(|e| self.err(e))?
        .as_ref()
        .map(row_to_trial)
        .ok_or(StoreError::NoTrial(number as i64))
    }

    fn strategy_state(&self, study: i64, known_version: u64) -> Result<(u64, StateLog)> {
        let mut c = self.reader();
        // One transaction at REPEATABLE READ: the version and the log agree.
        let tx = c.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().map_err(|e| self.err(e))?;
        let mut tx = Tx { tx, statements: &self.statements };
        let out = state_since(&mut tx, study, known_version).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn record_step(&mut self, study: i64, step: u64, members: &[(u64, String)], state: &[u8]) -> Result<()> {
        self.refuse_writes()?;
        let shown = self.shown.clone();
        let err = |e| StoreError::backend(&shown, e);
        let mut tx = Tx::begin(self.client.get_mut(), &self.statements).map_err(err)?;
        lock_study(&mut tx, study).map_err(err)?;
        for (member, record) in members {
            tx.execute(
                "INSERT INTO archsearch.members (study_id, step, member, record) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (study_id, step, member) DO UPDATE SET record = EXCLUDED.record",
                &[&study, &(step as i64), &(*member as i64), record],
            )
            .map_err(err)?;
        }
        let version: i64 = tx.query_one("SELECT state_version FROM archsearch.studies WHERE id = $1", &[&study]).map_err(err)?.get(0);
        write_state(&mut tx, study, version as u64, &StateWrite::snapshot(state.to_vec())).map_err(err)?;
        tx.commit().map_err(err)
    }

    fn members(&self, study: i64) -> Result<Vec<MemberRecord>> {
        let mut c = self.reader();
        let rows = c
            .query("SELECT step, member, record FROM archsearch.members WHERE study_id = $1 ORDER BY step, member", &[&study])
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                let record: String = r.get(2);
                let record = serde_json::from_str(&record).map_err(|e| StoreError::Corrupt(format!("member record: {e}")))?;
                Ok(MemberRecord { step: r.get::<_, i64>(0) as u64, member: r.get::<_, i64>(1) as u64, record })
            })
            .collect()
    }

    fn set_attr(&mut self, study: i64, key: &str, value: &str) -> Result<()> {
        self.refuse_writes()?;
        self.client
            .get_mut()
            .execute(
                "INSERT INTO archsearch.study_attrs (study_id, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (study_id, key) DO UPDATE SET value = EXCLUDED.value",
                &[&study, &key, &value],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn attrs(&self, study: i64) -> Result<BTreeMap<String, serde_json::Value>> {
        let mut c = self.reader();
        let rows = c
            .query("SELECT key, value FROM archsearch.study_attrs WHERE study_id = $1 ORDER BY key", &[&study])
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                let (k, v): (String, String) = (r.get(0), r.get(1));
                let parsed = serde_json::from_str(&v)
                    .map_err(|e| StoreError::Corrupt(format!("study attribute `{}`: {e}", &v[..v.len().min(40)])))?;
                Ok((k, parsed))
            })
            .collect()
    }

    fn claim_orphans(&mut self, study: i64, owner: &str, stale_after: f64) -> Result<Vec<TrialRecord>> {
        self.refuse_writes()?;
        let shown = self.shown.clone();
        let err = |e| StoreError::backend(&shown, e);
        let mut tx = Tx::begin(self.client.get_mut(), &self.statements).map_err(err)?;
        // The study first, as every transaction takes its locks (study, then
        // trials), so that claims and tells never deadlock.
        lock_study(&mut tx, study).map_err(err)?;
        // Rows another claimer holds are skipped, never handed out twice;
        // the heartbeat's age is measured on the server's clock.
        let rows = tx
            .query(
                &format!(
                    "SELECT {TRIAL_COLUMNS}, attempt_cost, released, {NOW} - heartbeat FROM archsearch.trials
                     WHERE study_id = $1 AND state = 'RUNNING' ORDER BY number FOR UPDATE SKIP LOCKED"
                ),
                &[&study],
            )
            .map_err(err)?;
        let mut claimed = Vec::new();
        for r in &rows {
            let mut tr = row_to_trial(r);
            let (lost, released, age): (f64, bool, f64) = (r.get(17), r.get(18), r.get(19));
            if owner_alive(&tr.owner, owner, age, stale_after) {
                continue;
            }
            tx.execute(
                &format!(
                    "UPDATE archsearch.trials SET owner = $2, heartbeat = {NOW}, attempts = attempts + 1,
                     crashes = crashes + (CASE WHEN released THEN 0 ELSE 1 END), released = FALSE,
                     cost = cost + attempt_cost, attempt_cost = 0 WHERE id = $1"
                ),
                &[&tr.id, &owner],
            )
            .map_err(err)?;
            tx.execute("UPDATE archsearch.studies SET total_cost = total_cost + $2 WHERE id = $1", &[&study, &lost]).map_err(err)?;
            tr.owner = owner.to_string();
            tr.attempts += 1;
            tr.crashes += u32::from(!released);
            tr.cost += lost;
            claimed.push(tr);
        }
        tx.commit().map_err(err)?;
        Ok(claimed)
    }

    fn release(&mut self, owner: &str) -> Result<u64> {
        self.refuse_writes()?;
        self.client
            .get_mut()
            .execute("UPDATE archsearch.trials SET released = TRUE, heartbeat = 0 WHERE owner = $1 AND state = 'RUNNING'", &[&owner])
            .map_err(|e| self.err(e))
    }

    fn connect_again(&self) -> Result<Option<Box<dyn Storage>>> {
        let s = if self.read_only { Self::open_read_only(&self.url)? } else { Self::connect(&self.url, false)? };
        Ok(Some(Box::new(s)))
    }
}

/// Creates a new, empty database with a random name on the server of
/// `url` (whose user may create databases) and returns its URL: what the
/// tests and benchmarks use to get a fresh store.
pub fn fresh_database(url: &str) -> Result<String> {
    let shown = redact(url);
    let mut admin = Client::connect(url, NoTls).map_err(|e| StoreError::backend(&shown, e))?;
    let name = format!("archsearch_{:016x}", rand::random::<u64>());
    admin.batch_execute(&format!("CREATE DATABASE {name}")).map_err(|e| StoreError::backend(&shown, e))?;
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    // `scheme://authority` without the database path.
    let host_end = base.find("://").and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j)).unwrap_or(base.len());
    let base = &base[..host_end];
    Ok(match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server the tests use (`scripts/with-postgres.sh` starts one).
    pub(crate) fn server() -> String {
        std::env::var("ARCHSEARCH_PG_URL").expect(
            "ARCHSEARCH_PG_URL is not set: the PostgreSQL tests need a server; run them through \
             scripts/test.sh or scripts/with-postgres.sh cargo test …",
        )
    }

    #[test]
    fn postgres_passes_the_conformance_suite() {
        let url = server();
        crate::conformance::run_all(&mut || Box::new(PostgresStorage::open(&fresh_database(&url).unwrap()).unwrap()));
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("postgres://u:secret@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgresql://h/db"), "postgresql://h/db");
    }

    /// Another program's `archsearch` schema is refused, for writing and for
    /// reading, and left as it was; a database without a store is refused
    /// for reading and gets nothing created.
    #[test]
    fn another_programs_schema_is_refused_untouched() {
        let url = fresh_database(&server()).unwrap();
        let e = PostgresStorage::open_read_only(&url).err().expect("no store yet").to_string();
        assert!(e.contains("holds no archsearch store"), "{e}");
        let mut c = Client::connect(&url, NoTls).unwrap();
        let schemas = |c: &mut Client| {
            c.query_one("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'archsearch'", &[]).unwrap().get::<_, i64>(0)
        };
        assert_eq!(schemas(&mut c), 0, "a read-only open created nothing");
        c.batch_execute("CREATE SCHEMA archsearch; CREATE TABLE archsearch.customers (id INT PRIMARY KEY); INSERT INTO archsearch.customers VALUES (1);")
            .unwrap();
        for e in [PostgresStorage::open(&url).err(), PostgresStorage::open_read_only(&url).err()] {
            let e = e.expect("refused").to_string();
            assert!(e.contains("not an archsearch study store") && e.contains("customers"), "{e}");
        }
        let tables = c.query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'archsearch'", &[]).unwrap();
        assert_eq!(tables.len(), 1, "nothing was added");
    }

    /// Workers that create the store at the same moment create it once.
    #[test]
    fn concurrent_opens_create_the_schema_once() {
        let url = fresh_database(&server()).unwrap();
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let mut s = PostgresStorage::open(&url).unwrap();
                    let new = NewStudy { name: "shared".into(), config: format!("x = {i}\n"), seed: 1, direction: Direction::Maximize };
                    s.open_study(&new).unwrap()
                })
            })
            .collect();
        let opened: Vec<(StudyRecord, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(opened.iter().filter(|(_, created)| *created).count(), 1);
        assert!(opened.iter().all(|(r, _)| r.uid == opened[0].0.uid));
    }

    /// Heartbeats are the server's clock: a trial's heartbeat is within a
    /// few seconds of the server's `now()`, whatever this machine's clock says.
    #[test]
    fn heartbeats_use_the_servers_clock() {
        let url = fresh_database(&server()).unwrap();
        let mut s = PostgresStorage::open(&url).unwrap();
        let id =
            s.open_study(&NewStudy { name: "hb".into(), config: String::new(), seed: 1, direction: Direction::Maximize }).unwrap().0.id;
        let launch = Launch::New(crate::NewTrial { arch: "a".into(), arch_json: "{}".into(), seed: 1, step: None });
        let st = s.ask(id, 0, "me", &mut |_, _| Ok(Some((StateWrite::snapshot(vec![]), launch.clone())))).unwrap().unwrap();
        assert!(s.heartbeat(st.trial_id, "me", 1.0).unwrap());
        let server_now: f64 = s.client.get_mut().query_one(&format!("SELECT {NOW}"), &[]).unwrap().get(0);
        let t = s.trial(id, 0).unwrap();
        assert!((server_now - t.heartbeat).abs() < 5.0, "heartbeat {} vs server {server_now}", t.heartbeat);
    }

    /// Every connection tells the server to drop it when its machine goes
    /// silent and to end a transaction left idle, so that a dead worker
    /// never holds the study row lock for hours.
    #[test]
    fn a_dead_workers_locks_do_not_outlive_it_for_hours() {
        let url = fresh_database(&server()).unwrap();
        let s = PostgresStorage::open(&url).unwrap();
        let show = |name: &str| s.client.borrow_mut().query_one(&format!("SHOW {name}"), &[]).unwrap().get::<_, String>(0);
        assert_eq!(show("idle_in_transaction_session_timeout"), "10min");
        // Zero on a Unix socket, where the kernel knows when the peer dies.
        assert!(["60", "1min", "0"].contains(&show("tcp_keepalives_idle").as_str()), "{}", show("tcp_keepalives_idle"));
        assert!(["6", "0"].contains(&show("tcp_keepalives_count").as_str()));
    }
}
