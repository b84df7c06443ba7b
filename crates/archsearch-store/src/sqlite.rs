//! The embedded SQLite backend: one file per store, WAL journal, a busy
//! timeout, and immediate transactions so that several processes can share a
//! study without losing or corrupting trials.

use std::collections::BTreeMap;
use std::time::Duration;

use archsearch_core::{Direction, TrialState};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{
    now, owner_alive, AskFn, Launch, Counts, Finish, NewStudy, Result, Started, Storage, StoreError, StudyRecord, TellFn,
    TrialRecord,
};

/// The schema tag of this version; `archsearch-1` stores are migrated.
const SCHEMA_TAG: &str = "archsearch-2";

/// `archsearch-1` → `archsearch-2`: trials gain the PAUSED state and the
/// `step` column. SQLite cannot alter a CHECK constraint, so the table is
/// rebuilt (the documented procedure: new table, copy, drop, rename), with
/// foreign keys off and in one transaction.
const MIGRATE_1_TO_2: &str = r#"
DROP TRIGGER IF EXISTS finished_trials_are_immutable;
DROP TRIGGER IF EXISTS finished_trials_take_no_values;
DROP INDEX IF EXISTS trials_running;
CREATE TABLE trials_v2 (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    number INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('RUNNING', 'PAUSED', 'COMPLETE', 'FAIL', 'PRUNED')),
    arch TEXT NOT NULL,
    arch_json TEXT NOT NULL,
    seed INTEGER NOT NULL,
    value REAL,
    metrics TEXT NOT NULL DEFAULT '{}',
    cost REAL NOT NULL DEFAULT 0,
    error TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    owner TEXT NOT NULL,
    heartbeat REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    step INTEGER,
    UNIQUE (study_id, number)
);
INSERT INTO trials_v2 (id, study_id, number, state, arch, arch_json, seed, value, metrics, cost, error, started_at, finished_at, owner, heartbeat, attempts)
    SELECT id, study_id, number, state, arch, arch_json, seed, value, metrics, cost, error, started_at, finished_at, owner, heartbeat, attempts FROM trials;
DROP TABLE trials;
ALTER TABLE trials_v2 RENAME TO trials;
UPDATE meta SET value = 'archsearch-2' WHERE key = 'schema';
"#;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    seed INTEGER NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('maximize', 'minimize')),
    version TEXT NOT NULL,
    created_at REAL NOT NULL,
    strategy_state BLOB,
    state_version INTEGER NOT NULL DEFAULT 0,
    n_started INTEGER NOT NULL DEFAULT 0,
    n_finished INTEGER NOT NULL DEFAULT 0,
    total_cost REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    number INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('RUNNING', 'PAUSED', 'COMPLETE', 'FAIL', 'PRUNED')),
    arch TEXT NOT NULL,
    arch_json TEXT NOT NULL,
    seed INTEGER NOT NULL,
    value REAL,
    metrics TEXT NOT NULL DEFAULT '{}',
    cost REAL NOT NULL DEFAULT 0,
    error TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    owner TEXT NOT NULL,
    heartbeat REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    step INTEGER,
    UNIQUE (study_id, number)
);
CREATE INDEX IF NOT EXISTS trials_running ON trials (study_id) WHERE state = 'RUNNING';
CREATE INDEX IF NOT EXISTS trials_paused ON trials (study_id) WHERE state = 'PAUSED';
CREATE TABLE IF NOT EXISTS trial_values (
    trial_id INTEGER NOT NULL REFERENCES trials(id),
    step INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (trial_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    step INTEGER NOT NULL,
    member INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (study_id, step, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS study_attrs (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (study_id, key)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS finished_trials_are_immutable
BEFORE UPDATE ON trials WHEN OLD.state NOT IN ('RUNNING', 'PAUSED')
BEGIN SELECT RAISE(ABORT, 'finished trials are immutable'); END;
CREATE TRIGGER IF NOT EXISTS finished_trials_take_no_values
BEFORE INSERT ON trial_values WHEN (SELECT state FROM trials WHERE id = NEW.trial_id) <> 'RUNNING'
BEGIN SELECT RAISE(ABORT, 'finished trials are immutable'); END;
"#;

/// A SQLite study store.
pub struct SqliteStorage {
    conn: Connection,
    path: String,
}

impl SqliteStorage {
    /// Opens (creating if needed) the store at `path`; `:memory:` works too.
    pub fn open(path: &str) -> Result<Self> {
        let err = |source| StoreError::Sqlite { path: path.to_string(), source };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(err)?;
        let s = SqliteStorage { conn, path: path.to_string() };
        // WAL lets readers run beside a writer; NORMAL sync is durable across
        // process crashes (the case we promise) and fast.
        s.conn
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(|e| s.err(e))?;
        // Schema creation (and migration) can race with another process
        // doing the same: both happen inside one immediate transaction.
        if let Err(e) = s.create_or_migrate() {
            let _ = s.conn.execute_batch("ROLLBACK;");
            return Err(e);
        }
        Ok(s)
    }

    fn create_or_migrate(&self) -> Result<()> {
        let err = |e| self.err(e);
        // Foreign keys are off while a migration rebuilds the referenced
        // table (the pragma is a no-op inside a transaction, so it is set
        // around it), and on for everything else.
        self.conn
            .execute_batch("PRAGMA foreign_keys = OFF; BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);")
            .map_err(err)?;
        let tag: Option<String> =
            self.conn.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| r.get(0)).optional().map_err(err)?;
        match tag.as_deref() {
            None => {
                self.conn.execute_batch(SCHEMA).map_err(err)?;
                self.conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?1)", [SCHEMA_TAG]).map_err(err)?;
            }
            Some("archsearch-1") => {
                tracing::info!(store = %self.path, "migrating the study store from schema archsearch-1 to archsearch-2");
                self.conn.execute_batch(MIGRATE_1_TO_2).map_err(err)?;
                self.conn.execute_batch(SCHEMA).map_err(err)?;
            }
            Some(t) if t == SCHEMA_TAG => self.conn.execute_batch(SCHEMA).map_err(err)?,
            Some(other) => return Err(StoreError::Corrupt(format!("{}: unknown schema `{other}` (a newer archsearch?)", self.path))),
        }
        self.conn.execute_batch("COMMIT; PRAGMA foreign_keys = ON;").map_err(err)
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.clone(), source }
    }

    fn study_where(&self, clause: &str, p: &dyn rusqlite::ToSql) -> Result<Option<StudyRecord>> {
        let sql = format!(
            "SELECT id, name, config, seed, direction, version, created_at, n_started, n_finished, total_cost
             FROM studies WHERE {clause}"
        );
        self.conn.query_row(&sql, [p], row_to_study).optional().map_err(|e| self.err(e))
    }
}

fn row_to_study(r: &rusqlite::Row<'_>) -> rusqlite::Result<StudyRecord> {
    let dir: String = r.get(4)?;
    Ok(StudyRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        config: r.get(2)?,
        seed: r.get::<_, i64>(3)? as u64,
        direction: if dir == "minimize" { Direction::Minimize } else { Direction::Maximize },
        version: r.get(5)?,
        created_at: r.get(6)?,
        counts: Counts { started: r.get::<_, i64>(7)? as u64, finished: r.get::<_, i64>(8)? as u64, cost: r.get(9)? },
    })
}

const TRIAL_COLUMNS: &str = "id, number, state, arch, arch_json, seed, value, metrics, cost, error, started_at, finished_at, owner, attempts, step";

fn row_to_trial(r: &rusqlite::Row<'_>) -> rusqlite::Result<TrialRecord> {
    let state: String = r.get(2)?;
    let metrics: String = r.get(7)?;
    Ok(TrialRecord {
        id: r.get(0)?,
        number: r.get::<_, i64>(1)? as u64,
        state: TrialState::parse(&state).unwrap_or(TrialState::Fail),
        arch: r.get(3)?,
        arch_json: r.get(4)?,
        seed: r.get::<_, i64>(5)? as u64,
        value: r.get(6)?,
        metrics: serde_json::from_str(&metrics).unwrap_or_default(),
        cost: r.get(8)?,
        error: r.get(9)?,
        started_at: r.get(10)?,
        finished_at: r.get(11)?,
        owner: r.get(12)?,
        attempts: r.get::<_, i64>(13)? as u32,
        step: r.get::<_, Option<i64>>(14)?.map(|s| s as u64),
        intermediate: Vec::new(),
    })
}

fn dir_str(d: Direction) -> &'static str {
    match d {
        Direction::Maximize => "maximize",
        Direction::Minimize => "minimize",
    }
}

/// Reads the state if its version differs from what the caller knows.
fn changed_state(tx: &rusqlite::Transaction<'_>, study: i64, known: u64) -> rusqlite::Result<(u64, Option<Vec<u8>>)> {
    let (version, state): (i64, Option<Vec<u8>>) =
        tx.query_row("SELECT state_version, strategy_state FROM studies WHERE id = ?1", [study], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let version = version as u64;
    Ok((version, if version != known { state } else { None }))
}

impl Storage for SqliteStorage {
    fn open_study(&mut self, new: &NewStudy) -> Result<(StudyRecord, bool)> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO studies (name, config, seed, direction, version, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![new.name, new.config, new.seed as i64, dir_str(new.direction), env!("CARGO_PKG_VERSION"), now()],
            )
            .map_err(err)?;
        tx.commit().map_err(err)?;
        let rec = self.study(&new.name)?;
        Ok((rec, inserted == 1))
    }

    fn study(&self, name: &str) -> Result<StudyRecord> {
        self.study_where("name = ?1", &name)?.ok_or_else(|| StoreError::NoStudy(name.to_string()))
    }

    fn studies(&self) -> Result<Vec<StudyRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, config, seed, direction, version, created_at, n_started, n_finished, total_cost
                 FROM studies ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], row_to_study).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.err(e))
    }

    fn ask(&mut self, study: i64, known_version: u64, owner: &str, f: &mut AskFn<'_>) -> Result<Option<Started>> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let (version, state) = changed_state(&tx, study, known_version).map_err(err)?;
        let counts = tx
            .query_row("SELECT n_started, n_finished, total_cost FROM studies WHERE id = ?1", [study], |r| {
                Ok(Counts { started: r.get::<_, i64>(0)? as u64, finished: r.get::<_, i64>(1)? as u64, cost: r.get(2)? })
            })
            .map_err(err)?;
        let Some((new_state, launch)) = f(state.as_deref(), &counts).map_err(StoreError::Callback)? else {
            return Ok(None);
        };
        let t = now();
        let (trial_id, number, new_trials) = match launch {
            Launch::New(trial) => {
                tx.execute(
                    "INSERT INTO trials (study_id, number, state, arch, arch_json, seed, started_at, owner, heartbeat, step)
                     VALUES (?1, ?2, 'RUNNING', ?3, ?4, ?5, ?6, ?7, ?6, ?8)",
                    params![study, counts.started as i64, trial.arch, trial.arch_json, trial.seed as i64, t, owner, trial.step.map(|s| s as i64)],
                )
                .map_err(err)?;
                (tx.last_insert_rowid(), counts.started, 1)
            }
            Launch::Resume { number, step } => {
                let id: Option<i64> = tx
                    .query_row(
                        "UPDATE trials SET state = 'RUNNING', owner = ?3, heartbeat = ?4, step = ?5
                         WHERE study_id = ?1 AND number = ?2 AND state = 'PAUSED' RETURNING id",
                        params![study, number as i64, owner, t, step as i64],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(err)?;
                (id.ok_or(StoreError::NotPaused(number, "resumed"))?, number, 0)
            }
        };
        tx.execute(
            "UPDATE studies SET n_started = n_started + ?4, strategy_state = ?2, state_version = ?3 WHERE id = ?1",
            params![study, new_state, (version + 1) as i64, new_trials],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Some(Started { trial_id, number, state_version: version + 1 }))
    }

    fn tell(&mut self, study: i64, trial: i64, known_version: u64, finish: &Finish, f: &mut TellFn<'_>) -> Result<u64> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let state: Option<String> =
            tx.query_row("SELECT state FROM trials WHERE id = ?1", [trial], |r| r.get(0)).optional().map_err(err)?;
        match state.as_deref() {
            None => return Err(StoreError::NoTrial(trial)),
            Some("RUNNING") => {}
            Some(_) => return Err(StoreError::Finished(trial)),
        }
        let (version, stored) = changed_state(&tx, study, known_version).map_err(err)?;
        let (new_state, prune) = f(stored.as_deref()).map_err(StoreError::Callback)?;
        let metrics = serde_json::to_string(&finish.metrics).expect("metrics serialise");
        // SQLite stores NaN as NULL; keep the value only when finite.
        let value = finish.value.filter(|v| v.is_finite());
        let t = now();
        let paused = finish.state == TrialState::Paused;
        tx.execute(
            "UPDATE trials SET state = ?2, value = ?3, metrics = ?4, cost = cost + ?5, error = ?6, finished_at = ?7 WHERE id = ?1",
            params![trial, finish.state.as_str(), value, metrics, finish.cost, finish.error, (!paused).then_some(t)],
        )
        .map_err(err)?;
        let mut newly_pruned = 0;
        for &number in &prune {
            let n = tx
                .execute(
                    "UPDATE trials SET state = 'PRUNED', finished_at = ?3 WHERE study_id = ?1 AND number = ?2 AND state = 'PAUSED'",
                    params![study, number as i64, t],
                )
                .map_err(err)?;
            if n == 0 {
                // Already pruned (by another process ending the study) is fine.
                let state: Option<String> = tx
                    .query_row("SELECT state FROM trials WHERE study_id = ?1 AND number = ?2", params![study, number as i64], |r| r.get(0))
                    .optional()
                    .map_err(err)?;
                if state.as_deref() != Some("PRUNED") {
                    return Err(StoreError::NotPaused(number, "pruned"));
                }
            }
            newly_pruned += n as i64;
        }
        let finished = newly_pruned + i64::from(!paused);
        tx.execute(
            "UPDATE studies SET n_finished = n_finished + ?5, total_cost = total_cost + ?2, strategy_state = ?3, state_version = ?4
             WHERE id = ?1",
            params![study, finish.cost, new_state, (version + 1) as i64, finished],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(version + 1)
    }

    fn prune_paused(&mut self, study: i64) -> Result<u64> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        // Not while a trial still runs (another process on the study): its
        // tell may resume or prune them; the last runner to finish prunes.
        let n = tx
            .execute(
                "UPDATE trials SET state = 'PRUNED', finished_at = ?2 WHERE study_id = ?1 AND state = 'PAUSED'
                 AND NOT EXISTS (SELECT 1 FROM trials WHERE study_id = ?1 AND state = 'RUNNING')",
                params![study, now()],
            )
            .map_err(err)?;
        tx.execute("UPDATE studies SET n_finished = n_finished + ?2 WHERE id = ?1", params![study, n as i64]).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(n as u64)
    }

    fn report(&mut self, trial: i64, step: u64, value: f64) -> Result<()> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let state: Option<String> =
            tx.query_row("SELECT state FROM trials WHERE id = ?1", [trial], |r| r.get(0)).optional().map_err(err)?;
        match state.as_deref() {
            None => return Err(StoreError::NoTrial(trial)),
            Some("RUNNING") => {}
            Some(_) => return Err(StoreError::Finished(trial)),
        }
        tx.execute(
            "INSERT OR REPLACE INTO trial_values (trial_id, step, value) VALUES (?1, ?2, ?3)",
            params![trial, step as i64, value],
        )
        .map_err(err)?;
        tx.execute("UPDATE trials SET heartbeat = ?2 WHERE id = ?1", params![trial, now()]).map_err(err)?;
        tx.commit().map_err(err)
    }

    fn trials(&self, study: i64) -> Result<Vec<TrialRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {TRIAL_COLUMNS} FROM trials WHERE study_id = ?1 ORDER BY number"))
            .map_err(|e| self.err(e))?;
        let mut trials: Vec<TrialRecord> = stmt
            .query_map([study], row_to_trial)
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))?;
        let mut values: BTreeMap<i64, Vec<(u64, f64)>> = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT v.trial_id, v.step, v.value FROM trial_values v JOIN trials t ON t.id = v.trial_id
                 WHERE t.study_id = ?1 ORDER BY v.trial_id, v.step",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([study], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, f64>(2)?)))
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (id, step, v) = row.map_err(|e| self.err(e))?;
            values.entry(id).or_default().push((step, v));
        }
        for t in &mut trials {
            if let Some(v) = values.remove(&t.id) {
                t.intermediate = v;
            }
        }
        Ok(trials)
    }

    fn strategy_state(&self, study: i64) -> Result<Option<(u64, Vec<u8>)>> {
        let (v, s): (i64, Option<Vec<u8>>) = self
            .conn
            .query_row("SELECT state_version, strategy_state FROM studies WHERE id = ?1", [study], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| self.err(e))?;
        Ok(s.map(|s| (v as u64, s)))
    }

    fn record_step(&mut self, study: i64, step: u64, members: &[(u64, String)], state: &[u8]) -> Result<()> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        for (member, record) in members {
            tx.execute(
                "INSERT OR REPLACE INTO members (study_id, step, member, record) VALUES (?1, ?2, ?3, ?4)",
                params![study, step as i64, *member as i64, record],
            )
            .map_err(err)?;
        }
        tx.execute(
            "UPDATE studies SET strategy_state = ?2, state_version = state_version + 1 WHERE id = ?1",
            params![study, state],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    fn members(&self, study: i64) -> Result<Vec<crate::MemberRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT step, member, record FROM members WHERE study_id = ?1 ORDER BY step, member")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([study], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (step, member, record) = row.map_err(|e| self.err(e))?;
            let record = serde_json::from_str(&record).map_err(|e| StoreError::Corrupt(format!("member record: {e}")))?;
            out.push(crate::MemberRecord { step: step as u64, member: member as u64, record });
        }
        Ok(out)
    }

    fn set_attr(&mut self, study: i64, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute("INSERT OR REPLACE INTO study_attrs (study_id, key, value) VALUES (?1, ?2, ?3)", params![study, key, value])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn attrs(&self, study: i64) -> Result<BTreeMap<String, serde_json::Value>> {
        let mut stmt = self.conn.prepare("SELECT key, value FROM study_attrs WHERE study_id = ?1 ORDER BY key").map_err(|e| self.err(e))?;
        let rows = stmt.query_map([study], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(|e| self.err(e))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.insert(k, serde_json::from_str(&v).map_err(|e| StoreError::Corrupt(format!("study attribute `{}`: {e}", &v[..v.len().min(40)])))?);
        }
        Ok(out)
    }

    fn claim_orphans(&mut self, study: i64, owner: &str, stale_after: f64) -> Result<Vec<TrialRecord>> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let running: Vec<TrialRecord> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {TRIAL_COLUMNS}, heartbeat FROM trials WHERE study_id = ?1 AND state = 'RUNNING' ORDER BY number"
                ))
                .map_err(err)?;
            let t = now();
            let rows = stmt
                .query_map([study], |r| Ok((row_to_trial(r)?, r.get::<_, f64>(15)?)))
                .map_err(err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err)?;
            rows.into_iter().filter(|(tr, hb)| !owner_alive(&tr.owner, owner, t - hb, stale_after)).map(|(tr, _)| tr).collect()
        };
        let mut claimed = Vec::new();
        for mut tr in running {
            tx.execute(
                "UPDATE trials SET owner = ?2, heartbeat = ?3, attempts = attempts + 1 WHERE id = ?1 AND state = 'RUNNING'",
                params![tr.id, owner, now()],
            )
            .map_err(err)?;
            tr.owner = owner.to_string();
            tr.attempts += 1;
            claimed.push(tr);
        }
        tx.commit().map_err(err)?;
        Ok(claimed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        crate::conformance::run_all(&mut || {
            n += 1;
            let p = dir.path().join(format!("s{n}.db"));
            Box::new(super::SqliteStorage::open(p.to_str().unwrap()).unwrap())
        });
    }

    /// A store written by archsearch 0.1 (schema `archsearch-1`) opens, keeps
    /// every trial and value, and takes paused trials afterwards.
    #[test]
    fn archsearch_1_stores_are_migrated() {
        use crate::Storage;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.db");
        let path = p.to_str().unwrap();
        {
            let c = rusqlite::Connection::open(path).unwrap();
            let v1 = super::SCHEMA
                .replace("'RUNNING', 'PAUSED', 'COMPLETE'", "'RUNNING', 'COMPLETE'")
                .replace("    step INTEGER,\n", "")
                .replace("NOT IN ('RUNNING', 'PAUSED')", "<> 'RUNNING'")
                .replace("CREATE INDEX IF NOT EXISTS trials_paused ON trials (study_id) WHERE state = 'PAUSED';", "");
            assert!(!v1.contains("PAUSED") && !v1.contains("step INTEGER,"));
            c.execute_batch(&v1).unwrap();
            c.execute_batch(
                "INSERT INTO meta VALUES ('schema', 'archsearch-1');
                 INSERT INTO studies (id, name, config, seed, direction, version, created_at, n_started, n_finished, total_cost)
                     VALUES (1, 'old', 'x = 1', 3, 'maximize', '0.1.0', 0, 1, 1, 2.5);
                 INSERT INTO trials (id, study_id, number, state, arch, arch_json, seed, value, cost, started_at, finished_at, owner, heartbeat)
                     VALUES (7, 1, 0, 'RUNNING', 'a', '{}', 9, 0.75, 2.5, 0, 1, 'h:1:1', 1);
                 INSERT INTO trial_values VALUES (7, 1, 0.5);
                 UPDATE trials SET state = 'COMPLETE' WHERE id = 7;",
            )
            .unwrap();
        }
        let mut s = super::SqliteStorage::open(path).unwrap();
        let rec = s.study("old").unwrap();
        let t = s.trials(rec.id).unwrap();
        assert_eq!((t.len(), t[0].value, t[0].step, t[0].intermediate.clone()), (1, Some(0.75), None, vec![(1, 0.5)]));
        assert_eq!(rec.counts.cost, 2.5);
        let tag: String = s.conn.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| r.get(0)).unwrap();
        assert_eq!(tag, "archsearch-2");
        // Finished trials stay immutable; new trials can pause.
        assert!(s.conn.execute("UPDATE trials SET value = 1 WHERE id = 7", []).is_err());
        let launch = crate::Launch::New(crate::NewTrial { arch: "b".into(), arch_json: "{}".into(), seed: 1, step: Some(1) });
        let st = s.ask(rec.id, 0, "me", &mut |_, _| Ok(Some((vec![], launch.clone())))).unwrap().unwrap();
        let f = crate::Finish { state: archsearch_core::TrialState::Paused, value: Some(0.1), metrics: Default::default(), cost: 1.0, error: None };
        s.tell(rec.id, st.trial_id, 0, &f, &mut |_| Ok((vec![], vec![]))).unwrap();
        assert_eq!(s.trials(rec.id).unwrap()[1].state, archsearch_core::TrialState::Paused);
        // Opening again is a no-op.
        drop(s);
        assert_eq!(super::SqliteStorage::open(path).unwrap().trials(rec.id).unwrap().len(), 2);
    }

    #[test]
    fn a_file_that_is_not_a_database_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.db");
        std::fs::write(&p, b"this is not a database, just some text that is long enough ............").unwrap();
        let e = super::SqliteStorage::open(p.to_str().unwrap()).err().unwrap().to_string();
        assert!(e.contains("junk.db"), "{e}");
    }
}
