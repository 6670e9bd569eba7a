//! The SQLite store: one file, WAL journal (readers never wait on the writer), `synchronous =
//! FULL` (a committed response survives a crash or power loss), a busy timeout for other
//! processes on the same file, and one connection behind a mutex for this process's writers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{oldest_over, Record, ResponseStore, Retention, StoreError};

pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS wick_responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    context TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS wick_responses_created ON wick_responses (created_at);
";

impl SqliteStore {
    /// Opens (creating it and its folder if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Other(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn: Mutex::new(conn), path: path.to_owned() })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every write is a transaction).
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        id: row.get(0)?,
        owner: row.get(1)?,
        created_at: row.get::<_, i64>(2)? as u64,
        response: row.get(3)?,
        input_items: row.get(4)?,
        context: row.get(5)?,
    })
}

impl ResponseStore for SqliteStore {
    fn put(&self, r: &Record) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO wick_responses (id, owner, created_at, response, input_items, context, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![r.id, r.owner, r.created_at as i64, r.response, r.input_items, r.context, r.bytes() as i64],
        )?;
        Ok(())
    }

    fn get(&self, owner: &str, id: &str) -> Result<Option<Record>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, owner, created_at, response, input_items, context FROM wick_responses
             WHERE id = ?1 AND owner = ?2",
        )?;
        Ok(stmt.query_row(params![id, owner], record).optional()?)
    }

    fn delete(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let n = self.conn().execute("DELETE FROM wick_responses WHERE id = ?1 AND owner = ?2", params![id, owner])?;
        Ok(n > 0)
    }

    fn purge(&self, now: u64, retention: Retention) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut dropped = 0;
        if let Some(age) = retention.max_age_secs {
            let cutoff = now.saturating_sub(age) as i64;
            dropped += tx.execute("DELETE FROM wick_responses WHERE created_at < ?1", params![cutoff])?;
        }
        if let Some(max) = retention.max_bytes {
            let total: i64 = tx.query_row("SELECT COALESCE(SUM(bytes), 0) FROM wick_responses", [], |r| r.get(0))?;
            if total as u64 > max {
                let rows: Vec<(String, u64)> = {
                    let mut stmt = tx.prepare("SELECT id, bytes FROM wick_responses ORDER BY created_at, rowid")?;
                    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
                    rows.collect::<Result<_, _>>()?
                };
                for id in oldest_over(rows, total as u64, max) {
                    dropped += tx.execute("DELETE FROM wick_responses WHERE id = ?1", params![id])?;
                }
            }
        }
        tx.commit()?;
        Ok(dropped)
    }

    fn total_bytes(&self) -> Result<u64, StoreError> {
        let total: i64 =
            self.conn().query_row("SELECT COALESCE(SUM(bytes), 0) FROM wick_responses", [], |r| r.get(0))?;
        Ok(total as u64)
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}
