//! Where stored responses live: a small trait with two implementations, SQLite (an embedded
//! file under the data directory, the default) and PostgreSQL (for several replicas). Each
//! record is one response: its JSON, its own input items, and the whole context the model saw
//! (so `previous_response_id` continues without walking a chain). Records belong to an owner,
//! the SHA-256 digest of the API key that made them ("" when the server has no keys); a lookup
//! with another owner finds nothing. Every write is committed before the call returns.

pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

/// One stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    /// Digest of the API key (see [`owner_of_key`]).
    pub owner: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The `response` object, JSON.
    pub response: String,
    /// This request's input items (with ids), a JSON array.
    pub input_items: String,
    /// Every item the model saw before its output (inherited and own), a JSON array.
    pub context: String,
}

impl Record {
    /// What the record weighs for the size limit.
    pub fn bytes(&self) -> u64 {
        (self.id.len() + self.owner.len() + self.response.len() + self.input_items.len() + self.context.len()) as u64
    }
}

/// How long and how much is kept; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_age_secs: Option<u64>,
    pub max_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("{0}")]
    Other(String),
}

/// A response store. Calls block (run them off the async workers).
pub trait ResponseStore: Send + Sync + 'static {
    /// Inserts (or replaces) a record, committed when this returns.
    fn put(&self, record: &Record) -> Result<(), StoreError>;
    /// The record `id` of `owner`, if there is one.
    fn get(&self, owner: &str, id: &str) -> Result<Option<Record>, StoreError>;
    /// Deletes the record `id` of `owner`; whether there was one.
    fn delete(&self, owner: &str, id: &str) -> Result<bool, StoreError>;
    /// Drops records older than the age limit, then the oldest ones until the total size is
    /// under the size limit. Returns how many were dropped.
    fn purge(&self, now: u64, retention: Retention) -> Result<usize, StoreError>;
    /// Total size of the records (as [`Record::bytes`] counts).
    fn total_bytes(&self) -> Result<u64, StoreError>;
    /// Where the store is, for logs (never a password).
    fn describe(&self) -> String;
}

/// The owner of records made with `key` (none: the server has no keys).
pub fn owner_of_key(key: Option<&str>) -> String {
    match key {
        None => String::new(),
        Some(k) => crate::auth::digest(k).iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// Opens the store named by `spec`: `postgres://…` or `postgresql://…` is PostgreSQL; `off`
/// disables storing; anything else is a SQLite file path; empty is
/// `<data_dir>/responses.sqlite3`.
pub fn open(spec: &str, data_dir: &Path) -> Result<Option<Arc<dyn ResponseStore>>, StoreError> {
    let spec = spec.trim();
    if spec == "off" || spec == "none" {
        return Ok(None);
    }
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return Ok(Some(Arc::new(postgres::PostgresStore::connect(spec)?)));
    }
    let path = if spec.is_empty() { data_dir.join("responses.sqlite3") } else { Path::new(spec).to_owned() };
    Ok(Some(Arc::new(sqlite::SqliteStore::open(&path)?)))
}

/// Rows to drop, oldest first, so that `total` minus their sizes is at most `max`.
pub(crate) fn oldest_over(rows: impl IntoIterator<Item = (String, u64)>, total: u64, max: u64) -> Vec<String> {
    let mut excess = total.saturating_sub(max);
    let mut out = Vec::new();
    for (id, bytes) in rows {
        if excess == 0 {
            break;
        }
        excess = excess.saturating_sub(bytes);
        out.push(id);
    }
    out
}
