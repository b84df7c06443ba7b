//! The embedded SQLite backend: one file per store, WAL journal, a busy
//! timeout, and immediate transactions so that several processes can share a
//! study without losing or corrupting trials.
//!
//! Before it writes anything, opening checks what the file is: a missing or
//! empty file becomes a store, an archsearch store is opened (and migrated
//! from an older schema), and anything else (another program's database, a
//! text file) is refused and left byte-for-byte as it was.

use std::collections::BTreeMap;
use std::time::Duration;

use archsearch_core::{Direction, TrialState};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::{
    now, owner_alive, AskFn, Counts, Finish, Launch, NewStudy, Result, Started, StateLog, StateSince, StateWrite, Storage, StoreError,
    StudyRecord, TellFn, TrialRecord,
};

/// The schema tag of this version; older stores are migrated on open.
const SCHEMA_TAG: &str = "archsearch-3";

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

/// `archsearch-2` → `archsearch-3`: studies gain their unique id and the
/// strategy-state log (snapshot version, log size); the state moves to a
/// table of its own (so that updating a study's counters does not rewrite
/// it); trials gain the cost of their current attempt. Existing states are
/// snapshots.
const MIGRATE_2_TO_3: &str = r#"
ALTER TABLE studies ADD COLUMN uid TEXT;
ALTER TABLE studies ADD COLUMN snapshot_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE studies ADD COLUMN snapshot_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE studies ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
CREATE TABLE strategy_snapshots (study_id INTEGER PRIMARY KEY REFERENCES studies(id), state BLOB NOT NULL);
INSERT INTO strategy_snapshots (study_id, state) SELECT id, strategy_state FROM studies WHERE strategy_state IS NOT NULL;
UPDATE studies SET snapshot_version = state_version, snapshot_bytes = COALESCE(length(strategy_state), 0), strategy_state = NULL;
ALTER TABLE trials ADD COLUMN attempt_cost REAL NOT NULL DEFAULT 0;
ALTER TABLE trials ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trials ADD COLUMN released INTEGER NOT NULL DEFAULT 0;
UPDATE trials SET crashes = attempts - 1;
UPDATE meta SET value = 'archsearch-3' WHERE key = 'schema';
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
    total_cost REAL NOT NULL DEFAULT 0,
    uid TEXT,
    snapshot_version INTEGER NOT NULL DEFAULT 0,
    snapshot_bytes INTEGER NOT NULL DEFAULT 0,
    log_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS strategy_snapshots (
    study_id INTEGER PRIMARY KEY REFERENCES studies(id),
    state BLOB NOT NULL
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
    attempt_cost REAL NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    released INTEGER NOT NULL DEFAULT 0,
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
CREATE TABLE IF NOT EXISTS strategy_log (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    version INTEGER NOT NULL,
    entry BLOB NOT NULL,
    PRIMARY KEY (study_id, version)
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
    /// Opened read-only, possibly at an older schema.
    read_only: bool,
}

/// What a file on disk is, judged without writing to it.
enum FileKind {
    /// Missing, empty, or a SQLite database with no tables: a store can be made.
    New,
    /// An archsearch store with this schema tag, and the read-only
    /// connection that found it.
    Store(String, Connection),
}

/// Reads what `path` is without changing it.
fn inspect(path: &str) -> Result<FileKind> {
    let foreign = |reason: String| Err(StoreError::Foreign { path: path.to_string(), reason });
    if path == ":memory:" {
        return Ok(FileKind::New);
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileKind::New),
        Err(e) => return foreign(format!("cannot read it ({e})")),
    };
    if meta.is_dir() {
        return foreign("it is a folder".into());
    }
    if meta.len() == 0 {
        return Ok(FileKind::New);
    }
    let mut head = [0u8; 16];
    let n = std::io::Read::read(
        &mut std::fs::File::open(path).map_err(|e| StoreError::Foreign { path: path.into(), reason: format!("cannot read it ({e})") })?,
        &mut head,
    )
    .unwrap_or(0);
    if n < 16 || &head != b"SQLite format 3\0" {
        return foreign("it is not a SQLite database".into());
    }
    let conn = open_ro_connection(path)?;
    let err = |source: rusqlite::Error| StoreError::backend(path, source);
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(err)?;
    if tables.is_empty() {
        return Ok(FileKind::New);
    }
    let tag: Option<String> = if tables.iter().any(|t| t == "meta") {
        conn.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| r.get(0)).optional().unwrap_or(None)
    } else {
        None
    };
    match tag {
        Some(t) if t.starts_with("archsearch-") => Ok(FileKind::Store(t, conn)),
        _ => {
            let shown: Vec<&str> = tables.iter().take(5).map(|s| s.as_str()).collect();
            let more = if tables.len() > 5 { ", …" } else { "" };
            foreign(format!("it is another program's SQLite database (tables: {}{more})", shown.join(", ")))
        }
    }
}

/// A read-only connection; a WAL database whose shared-memory file cannot be
/// made (a read-only folder) is read as immutable.
fn open_ro_connection(path: &str) -> Result<Connection> {
    let err = |source: rusqlite::Error| StoreError::backend(path, source);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(60)).map_err(err)?;
    // A store another process is creating or recovering answers "busy"
    // without waiting on the busy handler: try again for a while.
    let mut first = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0));
    for _ in 0..600 {
        match &first {
            Err(e) if matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)) => {
                std::thread::sleep(Duration::from_millis(50));
                first = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0));
            }
            _ => break,
        }
    }
    match first {
        Ok(_) => Ok(conn),
        Err(e) if !matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)) => Err(err(e)),
        Err(e) => {
            // Immutable mode ignores the WAL: only when it holds nothing.
            if std::fs::metadata(format!("{path}-wal")).is_ok_and(|m| m.len() > 0) {
                return Err(err(e));
            }
            let uri = format!("file:{}?immutable=1", path.replace('%', "%25").replace('?', "%3f").replace('#', "%23"));
            let conn = Connection::open_with_flags(&uri, flags).map_err(err)?;
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).map_err(err)?;
            Ok(conn)
        }
    }
}

/// A random study id (32 hex digits).
fn new_uid() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl SqliteStorage {
    /// Opens (creating if needed) the store at `path`; `:memory:` works too.
    /// A file that is not an archsearch store is refused untouched.
    pub fn open(path: &str) -> Result<Self> {
        inspect(path)?;
        let err = |source: rusqlite::Error| StoreError::backend(path, source);
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(err)?;
        let s = SqliteStorage { conn, path: path.to_string(), read_only: false };
        // WAL lets readers run beside a writer; NORMAL sync is durable across
        // process crashes (the case we promise) and fast. A 32 MiB page
        // cache keeps a large study's B-tree pages in memory.
        let pragmas = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -32768;";
        let mut set = s.conn.execute_batch(pragmas);
        for _ in 0..600 {
            // Switching to WAL needs a moment alone with the file: another
            // process creating the same store answers "busy" without waiting.
            match &set {
                Err(e)
                    if matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                    set = s.conn.execute_batch(pragmas);
                }
                _ => break,
            }
        }
        set.map_err(|e| s.err(e))?;
        // Schema creation (and migration) can race with another process
        // doing the same: both happen inside one immediate transaction.
        if let Err(e) = s.create_or_migrate() {
            let _ = s.conn.execute_batch("ROLLBACK;");
            return Err(e);
        }
        Ok(s)
    }

    /// Opens an existing store for reading only: a missing path, an empty
    /// file or a file that is not an archsearch store is an error; nothing is
    /// created, migrated or written.
    pub fn open_read_only(path: &str) -> Result<Self> {
        match inspect(path)? {
            FileKind::New if !std::path::Path::new(path).exists() => {
                Err(StoreError::Foreign { path: path.into(), reason: "there is no such file".into() })
            }
            FileKind::New => Err(StoreError::Foreign { path: path.into(), reason: "it is empty".into() }),
            FileKind::Store(tag, conn) => {
                if !["archsearch-1", "archsearch-2", SCHEMA_TAG].contains(&tag.as_str()) {
                    return Err(StoreError::Corrupt(format!("{path}: unknown schema `{tag}` (a newer archsearch?)")));
                }
                Ok(SqliteStorage { conn, path: path.to_string(), read_only: true })
            }
        }
    }

    fn create_or_migrate(&self) -> Result<()> {
        let err = |e| self.err(e);
        // Foreign keys are off while a migration rebuilds the referenced
        // table (the pragma is a no-op inside a transaction, so it is set
        // around it), and on for everything else.
        self.conn
            .execute_batch(
                "PRAGMA foreign_keys = OFF; BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
            )
            .map_err(err)?;
        let tag: Option<String> =
            self.conn.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| r.get(0)).optional().map_err(err)?;
        let migrate = |from: &str, steps: &[&str]| -> Result<()> {
            tracing::info!(store = %self.path, "migrating the study store from schema {from} to {SCHEMA_TAG}");
            for step in steps {
                self.conn.execute_batch(step).map_err(err)?;
            }
            self.conn.execute_batch(SCHEMA).map_err(err)?;
            self.give_studies_uids()
        };
        match tag.as_deref() {
            None => {
                self.conn.execute_batch(SCHEMA).map_err(err)?;
                self.conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?1)", [SCHEMA_TAG]).map_err(err)?;
            }
            Some("archsearch-1") => migrate("archsearch-1", &[MIGRATE_1_TO_2, MIGRATE_2_TO_3])?,
            Some("archsearch-2") => migrate("archsearch-2", &[MIGRATE_2_TO_3])?,
            Some(t) if t == SCHEMA_TAG => self.conn.execute_batch(SCHEMA).map_err(err)?,
            Some(other) => return Err(StoreError::Corrupt(format!("{}: unknown schema `{other}` (a newer archsearch?)", self.path))),
        }
        self.conn.execute_batch("COMMIT; PRAGMA foreign_keys = ON;").map_err(err)
    }

    /// Studies migrated from an older schema get their unique id.
    fn give_studies_uids(&self) -> Result<()> {
        let ids: Vec<i64> = self
            .conn
            .prepare("SELECT id FROM studies WHERE uid IS NULL")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.err(e))?;
        for id in ids {
            self.conn.execute("UPDATE studies SET uid = ?2 WHERE id = ?1", params![id, new_uid()]).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::backend(&self.path, source)
    }

    fn refuse_writes(&self) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly(self.path.clone()));
        }
        Ok(())
    }

    fn study_columns(&self) -> &'static str {
        if self.read_only && !self.has_column("studies", "uid") {
            "id, '' AS uid, name, config, seed, direction, version, created_at, n_started, n_finished, total_cost"
        } else {
            "id, COALESCE(uid, ''), name, config, seed, direction, version, created_at, n_started, n_finished, total_cost"
        }
    }

    fn has_column(&self, table: &str, column: &str) -> bool {
        self.conn
            .prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))
            .and_then(|mut st| st.exists([column]))
            .unwrap_or(false)
    }

    fn study_where(&self, clause: &str, p: &dyn rusqlite::ToSql) -> Result<Option<StudyRecord>> {
        let sql = format!("SELECT {} FROM studies WHERE {clause}", self.study_columns());
        self.conn.query_row(&sql, [p], row_to_study).optional().map_err(|e| self.err(e))
    }

    fn trial_columns(&self) -> String {
        let step = if self.read_only && !self.has_column("trials", "step") { "NULL AS step" } else { "step" };
        let crashes = if self.read_only && !self.has_column("trials", "crashes") { "attempts - 1" } else { "crashes" };
        format!("id, number, state, arch, arch_json, seed, value, metrics, cost, error, started_at, finished_at, owner, attempts, {step}, heartbeat, {crashes}")
    }
}

fn row_to_study(r: &rusqlite::Row<'_>) -> rusqlite::Result<StudyRecord> {
    let dir: String = r.get(5)?;
    Ok(StudyRecord {
        id: r.get(0)?,
        uid: r.get(1)?,
        name: r.get(2)?,
        config: r.get(3)?,
        seed: r.get::<_, i64>(4)? as u64,
        direction: if dir == "minimize" { Direction::Minimize } else { Direction::Maximize },
        version: r.get(6)?,
        created_at: r.get(7)?,
        counts: Counts { started: r.get::<_, i64>(8)? as u64, finished: r.get::<_, i64>(9)? as u64, cost: r.get(10)? },
    })
}

const TRIAL_COLUMNS: &str =
    "id, number, state, arch, arch_json, seed, value, metrics, cost, error, started_at, finished_at, owner, attempts, step, heartbeat, crashes";

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
        metrics: crate::metrics::from_json(&metrics).unwrap_or_default(),
        cost: r.get(8)?,
        error: r.get(9)?,
        started_at: r.get(10)?,
        finished_at: r.get(11)?,
        owner: r.get(12)?,
        attempts: r.get::<_, i64>(13)? as u32,
        step: r.get::<_, Option<i64>>(14)?.map(|s| s as u64),
        heartbeat: r.get(15)?,
        crashes: r.get::<_, i64>(16)? as u32,
        intermediate: Vec::new(),
    })
}

fn dir_str(d: Direction) -> &'static str {
    match d {
        Direction::Maximize => "maximize",
        Direction::Minimize => "minimize",
    }
}

/// The state version and what changed in it since `known`.
fn state_since(conn: &Connection, study: i64, known: u64) -> rusqlite::Result<(u64, StateLog)> {
    let (version, snapshot_version, log_bytes, snapshot_bytes): (i64, i64, i64, i64) =
        conn.query_row("SELECT state_version, snapshot_version, log_bytes, snapshot_bytes FROM studies WHERE id = ?1", [study], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    let (version, snapshot_version) = (version as u64, snapshot_version as u64);
    let entries = |after: u64| -> rusqlite::Result<Vec<Vec<u8>>> {
        conn.prepare_cached("SELECT entry FROM strategy_log WHERE study_id = ?1 AND version > ?2 ORDER BY version")?
            .query_map(params![study, after as i64], |r| r.get(0))?
            .collect()
    };
    let since = if known == version {
        StateSince::Current
    } else if known >= snapshot_version && known < version {
        StateSince::Entries(entries(known)?)
    } else {
        let snapshot: Option<Vec<u8>> =
            conn.query_row("SELECT state FROM strategy_snapshots WHERE study_id = ?1", [study], |r| r.get(0)).optional()?;
        StateSince::Snapshot(snapshot.unwrap_or_default(), entries(snapshot_version)?)
    };
    Ok((version, StateLog { version, since, log_bytes: log_bytes as u64, snapshot_bytes: snapshot_bytes as u64 }))
}

/// Writes a transaction's state change at `version + 1`.
fn write_state(tx: &rusqlite::Transaction<'_>, study: i64, version: u64, w: &StateWrite) -> rusqlite::Result<()> {
    let next = (version + 1) as i64;
    for (step, member, record) in &w.members {
        tx.execute(
            "INSERT OR REPLACE INTO members (study_id, step, member, record) VALUES (?1, ?2, ?3, ?4)",
            params![study, *step as i64, *member as i64, record],
        )?;
    }
    match &w.snapshot {
        Some(state) => {
            tx.execute("DELETE FROM strategy_log WHERE study_id = ?1", [study])?;
            tx.execute("INSERT OR REPLACE INTO strategy_snapshots (study_id, state) VALUES (?1, ?2)", params![study, state])?;
            tx.execute(
                "UPDATE studies SET state_version = ?2, snapshot_version = ?2, snapshot_bytes = ?3, log_bytes = 0 WHERE id = ?1",
                params![study, next, state.len() as i64],
            )?;
        }
        None => {
            tx.execute("INSERT INTO strategy_log (study_id, version, entry) VALUES (?1, ?2, ?3)", params![study, next, w.entry])?;
            tx.execute(
                "UPDATE studies SET state_version = ?2, log_bytes = log_bytes + ?3 WHERE id = ?1",
                params![study, next, w.entry.len() as i64],
            )?;
        }
    }
    Ok(())
}

/// The owner of a trial, checked against the caller: `Ok(state)` if the
/// caller owns it.
fn owned_state(tx: &Connection, trial: i64, owner: &str, path: &str) -> Result<String> {
    let row: Option<(String, String)> = tx
        .query_row("SELECT state, owner FROM trials WHERE id = ?1", [trial], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(|source: rusqlite::Error| StoreError::backend(path, source))?;
    // The owner first: a runner whose trial was taken over (and perhaps
    // finished by the new owner) learns that it lost it.
    match row {
        None => Err(StoreError::NoTrial(trial)),
        Some((_, o)) if o != owner => Err(StoreError::NotOwner { trial, owner: o }),
        Some((state, _)) if state != "RUNNING" => Err(StoreError::Finished(trial)),
        Some((state, _)) => Ok(state),
    }
}

impl Storage for SqliteStorage {
    fn open_study(&mut self, new: &NewStudy) -> Result<(StudyRecord, bool)> {
        self.refuse_writes()?;
        let path = self.path.clone();
        let err = |source: rusqlite::Error| StoreError::backend(&path, source);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO studies (name, config, seed, direction, version, created_at, uid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![new.name, new.config, new.seed as i64, dir_str(new.direction), env!("CARGO_PKG_VERSION"), now(), new_uid()],
            )
            .map_err(err)?;
        tx.commit().map_err(err)?;
        let rec = self.study(&new.name)?;
        Ok((rec, inserted == 1))
    }

    fn set_config(&mut self, study: i64, config: &str) -> Result<()> {
        self.refuse_writes()?;
        self.conn.execute("UPDATE studies SET config = ?2 WHERE id = ?1", params![study, config]).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn study(&self, name: &str) -> Result<StudyRecord> {
        self.study_where("name = ?1", &name)?.ok_or_else(|| StoreError::NoStudy(name.to_string()))
    }

    fn studies(&self) -> Result<Vec<StudyRecord>> {
        let mut stmt = self.conn.prepare(&format!("SELECT {} FROM studies ORDER BY id", self.study_columns())).map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], row_to_study).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.err(e))
    }

    fn ask(&mut self, study: i64, known_version: u64, owner: &str, f: &mut AskFn<'_>) -> Result<Option<Started>> {
        self.refuse_writes()?;
        let path = self.path.clone();
        let err = |source: rusqlite::Error| StoreError::backend(&path, source);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let (version, log) = state_since(&tx, study, known_version).map_err(err)?;
        let counts = tx
            .query_row("SELECT n_started, n_finished, total_cost FROM studies WHERE id = ?1", [study], |r| {
                Ok(Counts { started: r.get::<_, i64>(0)? as u64, finished: r.get::<_, i64>(1)? as u64, cost: r.get(2)? })
            })
            .map_err(err)?;
        let Some((write, launch)) = f(&log, &counts).map_err(StoreError::Callback)? else {
            return Ok(None);
        };
        let t = now();
        let (trial_id, number, new_trials) = match launch {
            Launch::New(trial) => {
                tx.execute(
                    "INSERT INTO trials (study_id, number, state, arch, arch_json, seed, started_at, owner, heartbeat, step)
                     VALUES (?1, ?2, 'RUNNING', ?3, ?4, ?5, ?6, ?7, ?6, ?8)",
                    params![
                        study,
                        counts.started as i64,
                        trial.arch,
                        trial.arch_json,
                        trial.seed as i64,
                        t,
                        owner,
                        trial.step.map(|s| s as i64)
                    ],
                )
                .map_err(err)?;
                (tx.last_insert_rowid(), counts.started, 1)
            }
            Launch::Resume { number, step } => {
                let id: Option<i64> = tx
                    .query_row(
                        "UPDATE trials SET state = 'RUNNING', owner = ?3, heartbeat = ?4, step = ?5, attempt_cost = 0
                         WHERE study_id = ?1 AND number = ?2 AND state = 'PAUSED' RETURNING id",
                        params![study, number as i64, owner, t, step as i64],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(err)?;
                (id.ok_or(StoreError::NotPaused(number, "resumed"))?, number, 0)
            }
        };
        tx.execute("UPDATE studies SET n_started = n_started + ?2 WHERE id = ?1", params![study, new_trials]).map_err(err)?;
        write_state(&tx, study, version, &write).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Some(Started { trial_id, number, state_version: version + 1 }))
    }

    fn tell(&mut self, study: i64, trial: i64, owner: &str, known_version: u64, finish: &Finish, f: &mut TellFn<'_>) -> Result<u64> {
        self.refuse_writes()?;
        let path = self.path.clone();
        let err = |source: rusqlite::Error| StoreError::backend(&path, source);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        owned_state(&tx, trial, owner, &path)?;
        let (version, log) = state_since(&tx, study, known_version).map_err(err)?;
        let (write, prune) = f(&log).map_err(StoreError::Callback)?;
        let metrics = crate::metrics::to_json(&finish.metrics);
        // SQLite stores NaN as NULL; keep the value only when finite.
        let value = finish.value.filter(|v| v.is_finite());
        let t = now();
        let paused = finish.state == TrialState::Paused;
        tx.execute(
            "UPDATE trials SET state = ?2, value = ?3, metrics = ?4, cost = cost + ?5, error = ?6, finished_at = ?7, attempt_cost = 0 WHERE id = ?1",
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
            "UPDATE studies SET n_finished = n_finished + ?3, total_cost = total_cost + ?2 WHERE id = ?1",
            params![study, finish.cost, finished],
        )
        .map_err(err)?;
        write_state(&tx, study, version, &write).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(version + 1)
    }

    fn prune_paused(&mut self, study: i64) -> Result<u64> {
        self.refuse_writes()?;
        let path = self.path.clone();
        let err = |source: rusqlite::Error| StoreError::backend(&path, source);
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

    fn report(&mut self, trial: i64, owner: &str, step: u64, value: f64) -> Result<()> {
        self.refuse_writes()?;
        let path = self.path.clone();
        let err = |source: rusqlite::Error| StoreError::backend(&path, source);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        owned_state(&tx, trial, owner, &path)?;
        tx.execute("INSERT OR REPLACE INTO trial_values (trial_id, step, value) VALUES (?1, ?2, ?3)", params![trial, step as i64, value])
            .map_err(err)?;
        tx.execute("UPDATE trials SET heartbeat = ?2 WHERE id = ?1", params![trial, now()]).map_err(err)?;
        tx.commit().map_err(err)
    }

    fn heartbeat(&mut self, trial: i64, owner: &str, attempt_cost: f64) -> Result<bool> {
        self.refuse_writes()?;
        let n = self
            .conn
            .execute(
                "UPDATE trials SET heartbeat = ?3, attempt_cost = ?4 WHERE id = ?1 AND owner = ?2 AND state = 'RUNNING'",
                params![trial, owner, now(), attempt_cost],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    fn trials(&self, study: i64) -> Result<Vec<TrialRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {} FROM trials WHERE study_id = ?1 ORDER BY number", self.trial_columns()))
            .map_err(|e| self.err(e))?;
        let mut trials: Vec<TrialRecord> =
            stmt.query_map([study], row_to_trial).map_err(|e| self.err(e))?.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))?;
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

    fn trial(&self, study: i64, number: u64) -> Result<TrialRecord> {
        self.conn
            .query_row(
                &format!("SELECT {} FROM trials WHERE study_id = ?1 AND number = ?2", self.trial_columns()),
                params![study, number as i64],
                row_to_trial,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or(StoreError::NoTrial(number as i64))
    }

    fn strategy_state(&self, study: i64, known_version: u64) -> Result<(u64, StateLog)> {
        // One read transaction, so the version and the log entries agree.
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let out = state_since(&tx, study, known_version).map_err(|e| self.err(e))?;
        tx.finish().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn record_step(&mut self, study: i64, step: u64, members: &[(u64, String)], state: &[u8]) -> Result<()> {
        self.refuse_writes()?;
        let path = self.path.clone();
        let err = |source: rusqlite::Error| StoreError::backend(&path, source);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        for (member, record) in members {
            tx.execute(
                "INSERT OR REPLACE INTO members (study_id, step, member, record) VALUES (?1, ?2, ?3, ?4)",
                params![study, step as i64, *member as i64, record],
            )
            .map_err(err)?;
        }
        let version: i64 = tx.query_row("SELECT state_version FROM studies WHERE id = ?1", [study], |r| r.get(0)).map_err(err)?;
        write_state(&tx, study, version as u64, &StateWrite::snapshot(state.to_vec())).map_err(err)?;
        tx.commit().map_err(err)
    }

    fn members(&self, study: i64) -> Result<Vec<crate::MemberRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT step, member, record FROM members WHERE study_id = ?1 ORDER BY step, member")
            .map_err(|e| self.err(e))?;
        let rows =
            stmt.query_map([study], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (step, member, record) = row.map_err(|e| self.err(e))?;
            let record = serde_json::from_str(&record).map_err(|e| StoreError::Corrupt(format!("member record: {e}")))?;
            out.push(crate::MemberRecord { step: step as u64, member: member as u64, record });
        }
        Ok(out)
    }

    fn set_attr(&mut self, study: i64, key: &str, value: &str) -> Result<()> {
        self.refuse_writes()?;
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
            out.insert(
                k,
                serde_json::from_str(&v).map_err(|e| StoreError::Corrupt(format!("study attribute `{}`: {e}", &v[..v.len().min(40)])))?,
            );
        }
        Ok(out)
    }

    fn claim_orphans(&mut self, study: i64, owner: &str, stale_after: f64) -> Result<Vec<TrialRecord>> {
        self.refuse_writes()?;
        let path = self.path.clone();
        let err = |source: rusqlite::Error| StoreError::backend(&path, source);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let running: Vec<(TrialRecord, f64, bool)> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {TRIAL_COLUMNS}, attempt_cost, released FROM trials WHERE study_id = ?1 AND state = 'RUNNING' ORDER BY number"
                ))
                .map_err(err)?;
            let t = now();
            let rows = stmt
                .query_map([study], |r| Ok((row_to_trial(r)?, r.get::<_, f64>(17)?, r.get::<_, bool>(18)?)))
                .map_err(err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err)?;
            rows.into_iter().filter(|(tr, _, _)| !owner_alive(&tr.owner, owner, t - tr.heartbeat, stale_after)).collect()
        };
        let mut claimed = Vec::new();
        for (mut tr, lost, released) in running {
            // The dead attempt's cost (as of its last heartbeat) is spent; it
            // counts as a crash unless its runner released it (interrupted).
            tx.execute(
                "UPDATE trials SET owner = ?2, heartbeat = ?3, attempts = attempts + 1, crashes = crashes + (1 - released), released = 0,
                 cost = cost + attempt_cost, attempt_cost = 0
                 WHERE id = ?1 AND state = 'RUNNING'",
                params![tr.id, owner, now()],
            )
            .map_err(err)?;
            tx.execute("UPDATE studies SET total_cost = total_cost + ?2 WHERE id = ?1", params![study, lost]).map_err(err)?;
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
        let n = self
            .conn
            .execute("UPDATE trials SET released = 1, heartbeat = 0 WHERE owner = ?1 AND state = 'RUNNING'", [owner])
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    fn connect_again(&self) -> Result<Option<Box<dyn Storage>>> {
        if self.path == ":memory:" || self.read_only {
            return Ok(None);
        }
        Ok(Some(Box::new(SqliteStorage::open(&self.path)?)))
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
                .replace("    attempt_cost REAL NOT NULL DEFAULT 0,\n    crashes INTEGER NOT NULL DEFAULT 0,\n    released INTEGER NOT NULL DEFAULT 0,\n", "")
                .replace(",\n    uid TEXT,\n    snapshot_version INTEGER NOT NULL DEFAULT 0,\n    snapshot_bytes INTEGER NOT NULL DEFAULT 0,\n    log_bytes INTEGER NOT NULL DEFAULT 0\n", "\n")
                .replace("CREATE TABLE IF NOT EXISTS strategy_snapshots (\n    study_id INTEGER PRIMARY KEY REFERENCES studies(id),\n    state BLOB NOT NULL\n);", "")
                .replace("NOT IN ('RUNNING', 'PAUSED')", "<> 'RUNNING'")
                .replace("CREATE INDEX IF NOT EXISTS trials_paused ON trials (study_id) WHERE state = 'PAUSED';", "");
            assert!(
                !v1.contains("PAUSED")
                    && !v1.contains("step INTEGER,")
                    && !v1.contains("uid")
                    && !v1.contains("attempt_cost")
                    && !v1.contains("snapshot")
            );
            c.execute_batch(&v1).unwrap();
            c.execute_batch(
                "INSERT INTO meta VALUES ('schema', 'archsearch-1');
                 INSERT INTO studies (id, name, config, seed, direction, version, created_at, n_started, n_finished, total_cost)
                     VALUES (1, 'old', 'x = 1', 3, 'maximize', '0.1.0', 0, 1, 1, 2.5);
                 INSERT INTO trials (id, study_id, number, state, arch, arch_json, seed, value, cost, started_at, finished_at, owner, heartbeat)
                     VALUES (7, 1, 0, 'RUNNING', 'a', '{}', 9, 0.75, 2.5, 0, 1, 'h:1:1', 1);
                 INSERT INTO trial_values VALUES (7, 1, 0.5);
                 UPDATE trials SET state = 'COMPLETE' WHERE id = 7;
                 INSERT INTO studies (id, name, config, seed, direction, version, created_at, strategy_state, state_version)
                     VALUES (2, 'with-state', 'x = 1', 3, 'maximize', '0.1.0', 0, X'0102', 4);",
            )
            .unwrap();
        }
        let mut s = super::SqliteStorage::open(path).unwrap();
        let rec = s.study("old").unwrap();
        let t = s.trials(rec.id).unwrap();
        assert_eq!((t.len(), t[0].value, t[0].step, t[0].intermediate.clone()), (1, Some(0.75), None, vec![(1, 0.5)]));
        assert_eq!(rec.counts.cost, 2.5);
        let tag: String = s.conn.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| r.get(0)).unwrap();
        assert_eq!(tag, "archsearch-3");
        assert_eq!(rec.uid.len(), 32, "a migrated study gets its unique id");
        // A study without a state is at the initial version; one with a state has it as its snapshot.
        assert_eq!(s.strategy_state(rec.id, 0).unwrap().1.since, crate::StateSince::Current);
        let other = s.study("with-state").unwrap();
        assert_eq!(
            s.strategy_state(other.id, 0).unwrap(),
            (4, crate::StateLog { version: 4, since: crate::StateSince::Snapshot(vec![1, 2], vec![]), log_bytes: 0, snapshot_bytes: 2 })
        );
        assert_ne!(other.uid, rec.uid);
        // Finished trials stay immutable; new trials can pause.
        assert!(s.conn.execute("UPDATE trials SET value = 1 WHERE id = 7", []).is_err());
        let launch = crate::Launch::New(crate::NewTrial { arch: "b".into(), arch_json: "{}".into(), seed: 1, step: Some(1) });
        let st = s.ask(rec.id, 0, "me", &mut |_, _| Ok(Some((crate::StateWrite::snapshot(vec![]), launch.clone())))).unwrap().unwrap();
        let f = crate::Finish {
            state: archsearch_core::TrialState::Paused,
            value: Some(0.1),
            metrics: Default::default(),
            cost: 1.0,
            error: None,
        };
        s.tell(rec.id, st.trial_id, "me", 0, &f, &mut |_| Ok((crate::StateWrite::snapshot(vec![]), vec![]))).unwrap();
        assert_eq!(s.trials(rec.id).unwrap()[1].state, archsearch_core::TrialState::Paused);
        // Opening again is a no-op.
        drop(s);
        assert_eq!(super::SqliteStorage::open(path).unwrap().trials(rec.id).unwrap().len(), 2);
    }

    #[test]
    fn a_file_that_is_not_a_database_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.db");
        let text = b"this is not a database, just some text that is long enough ............";
        std::fs::write(&p, text).unwrap();
        let e = super::SqliteStorage::open(p.to_str().unwrap()).err().unwrap().to_string();
        assert!(e.contains("junk.db") && e.contains("not a SQLite database"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), text);
    }

    /// Another program's database is refused for writing and for reading,
    /// and stays byte-for-byte as it was (no WAL switch, no new tables).
    #[test]
    fn another_programs_database_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("other.db");
        {
            let c = rusqlite::Connection::open(&p).unwrap();
            c.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers VALUES (1, 'x');").unwrap();
        }
        let before = std::fs::read(&p).unwrap();
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        let n = files();
        for e in [super::SqliteStorage::open(p.to_str().unwrap()).err(), super::SqliteStorage::open_read_only(p.to_str().unwrap()).err()] {
            let e = e.expect("refused").to_string();
            assert!(e.contains("other.db") && e.contains("not an archsearch study store") && e.contains("customers"), "{e}");
        }
        assert_eq!(std::fs::read(&p).unwrap(), before);
        assert_eq!(files(), n, "no -wal or -shm file was made");
    }

    #[test]
    fn an_empty_file_becomes_a_store_and_read_only_opens_never_create() {
        use crate::Storage;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.db");
        std::fs::write(&p, b"").unwrap();
        let missing = dir.path().join("missing.db");
        let e = super::SqliteStorage::open_read_only(missing.to_str().unwrap()).err().unwrap().to_string();
        assert!(e.contains("no such file"), "{e}");
        assert!(!missing.exists());
        assert!(super::SqliteStorage::open_read_only(p.to_str().unwrap()).err().unwrap().to_string().contains("empty"));
        let mut s = super::SqliteStorage::open(p.to_str().unwrap()).unwrap();
        s.open_study(&crate::NewStudy {
            name: "x".into(),
            config: String::new(),
            seed: 0,
            direction: archsearch_core::Direction::Maximize,
        })
        .unwrap();
        drop(s);
        // Read-only: reads, refuses writes, and leaves the file as it was.
        let before = std::fs::read(&p).unwrap();
        let mut ro = super::SqliteStorage::open_read_only(p.to_str().unwrap()).unwrap();
        assert_eq!(ro.studies().unwrap().len(), 1);
        assert!(ro.set_attr(1, "k", "1").is_err());
        drop(ro);
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }
}
