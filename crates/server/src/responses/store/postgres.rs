//! The PostgreSQL store, for several replicas sharing one database. One connection behind a
//! mutex, reopened when it breaks; each statement commits on its own (autocommit), the purge
//! in one transaction.

use std::sync::Mutex;

use postgres::{Client, NoTls};

use super::{oldest_over, Record, ResponseStore, Retention, StoreError};

pub struct PostgresStore {
    url: String,
    client: Mutex<Option<Client>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS wick_responses (
    seq BIGSERIAL,
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    context TEXT NOT NULL,
    bytes BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS wick_responses_created ON wick_responses (created_at);
";

impl PostgresStore {
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut client = Client::connect(url, NoTls)?;
        client.batch_execute(SCHEMA)?;
        Ok(Self { url: url.to_owned(), client: Mutex::new(Some(client)) })
    }

    /// Runs `f` on a live connection, reconnecting once if the old one is closed.
    fn with<T>(&self, f: impl Fn(&mut Client) -> Result<T, postgres::Error>) -> Result<T, StoreError> {
        let mut guard = self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(Client::connect(&self.url, NoTls)?);
        }
        let client = guard.as_mut().ok_or_else(|| StoreError::Other("no connection".into()))?;
        match f(client) {
            Err(e) if client.is_closed() => {
                *guard = None;
                Err(e.into())
            }
            r => Ok(r?),
        }
    }
}

fn record(row: &postgres::Row) -> Record {
    Record {
        id: row.get(0),
        owner: row.get(1),
        created_at: row.get::<_, i64>(2) as u64,
        response: row.get(3),
        input_items: row.get(4),
        context: row.get(5),
    }
}

impl ResponseStore for PostgresStore {
    fn put(&self, r: &Record) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO wick_responses (id, owner, created_at, response, input_items, context, bytes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, created_at = EXCLUDED.created_at,
                   response = EXCLUDED.response, input_items = EXCLUDED.input_items,
                   context = EXCLUDED.context, bytes = EXCLUDED.bytes",
                &[
                    &r.id,
                    &r.owner,
                    &(r.created_at as i64),
                    &r.response,
                    &r.input_items,
                    &r.context,
                    &(r.bytes() as i64),
                ],
            )
            .map(|_| ())
        })
    }

    fn get(&self, owner: &str, id: &str) -> Result<Option<Record>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT id, owner, created_at, response, input_items, context FROM wick_responses
                 WHERE id = $1 AND owner = $2",
                &[&id, &owner],
            )
            .map(|row| row.as_ref().map(record))
        })
    }

    fn delete(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM wick_responses WHERE id = $1 AND owner = $2", &[&id, &owner]).map(|n| n > 0)
        })
    }

    fn purge(&self, now: u64, retention: Retention) -> Result<usize, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let mut dropped = 0u64;
            if let Some(age) = retention.max_age_secs {
                let cutoff = now.saturating_sub(age) as i64;
                dropped += tx.execute("DELETE FROM wick_responses WHERE created_at < $1", &[&cutoff])?;
            }
            if let Some(max) = retention.max_bytes {
                let total: i64 =
                    tx.query_one("SELECT COALESCE(SUM(bytes), 0)::BIGINT FROM wick_responses", &[])?.get(0);
                if total as u64 > max {
                    let rows = tx.query("SELECT id, bytes FROM wick_responses ORDER BY created_at, seq", &[])?;
                    let rows = rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64));
                    let ids = oldest_over(rows, total as u64, max);
                    dropped += tx.execute("DELETE FROM wick_responses WHERE id = ANY($1)", &[&ids])?;
                }
            }
            tx.commit()?;
            Ok(dropped as usize)
        })
    }

    fn total_bytes(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            let total: i64 = c.query_one("SELECT COALESCE(SUM(bytes), 0)::BIGINT FROM wick_responses", &[])?.get(0);
            Ok(total as u64)
        })
    }

    fn describe(&self) -> String {
        // Keep the password out of logs.
        match self.url.split_once('@') {
            Some((_, host)) => format!("postgres://…@{host}"),
            None => self.url.clone(),
        }
    }
}
