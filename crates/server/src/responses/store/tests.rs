//! The store contract, run on SQLite always and on PostgreSQL when `WICK_TEST_POSTGRES_URL`
//! names a server (scripts/test.sh starts a throwaway one).

use std::sync::Arc;

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::*;

fn rec(id: &str, owner: &str, created_at: u64, size: usize) -> Record {
    Record {
        id: id.into(),
        owner: owner.into(),
        created_at,
        response: format!("{{\"id\":\"{id}\",\"pad\":\"{}\"}}", "x".repeat(size)),
        input_items: "[]".into(),
        context: "[]".into(),
    }
}

/// What every store must do. `tag` keeps ids apart between runs on a shared database.
fn contract(store: Arc<dyn ResponseStore>, tag: &str) {
    let id = |s: &str| format!("{tag}-{s}");
    let a = rec(&id("a"), "alice", 100, 10);
    store.put(&a).expect("put");
    assert_eq!(store.get("alice", &a.id).expect("get"), Some(a.clone()));
    assert_eq!(store.get("bob", &a.id).expect("get"), None, "another owner sees nothing");
    assert!(!store.delete("bob", &a.id).expect("delete"), "another owner cannot delete");
    assert!(store.get("alice", &a.id).expect("get").is_some());
    assert!(store.delete("alice", &a.id).expect("delete"));
    assert!(!store.delete("alice", &a.id).expect("delete twice"));
    assert_eq!(store.get("alice", &a.id).expect("get"), None);

    // Concurrent writers: every write lands.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            let tag = tag.to_owned();
            std::thread::spawn(move || {
                for i in 0..25 {
                    store.put(&rec(&format!("{tag}-c{t}-{i}"), "carol", 200, 50)).expect("concurrent put");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    for t in 0..4 {
        for i in 0..25 {
            assert!(store.get("carol", &id(&format!("c{t}-{i}"))).expect("get").is_some(), "c{t}-{i}");
        }
    }

    // Age: everything older than the limit goes, newer stays.
    store.put(&rec(&id("old"), "dave", 1_000, 10)).expect("put");
    store.put(&rec(&id("new"), "dave", 1_000_000_000_000, 10)).expect("put");
    let n = store.purge(1_000_000_000_000, Retention { max_age_secs: Some(3600), max_bytes: None }).expect("purge");
    assert!(n >= 101, "dropped {n}");
    assert_eq!(store.get("dave", &id("old")).expect("get"), None);
    assert!(store.get("dave", &id("new")).expect("get").is_some());

    // Size: the oldest go first until the rest fits.
    let base = 1_000_000_000_001;
    let sized: Vec<Record> = (0..5).map(|i| rec(&id(&format!("s{i}")), "erin", base + i, 1000)).collect();
    for r in &sized {
        store.put(r).expect("put");
    }
    let keep = store.total_bytes().expect("total") - 2 * sized[0].bytes();
    store.purge(base + 10, Retention { max_age_secs: None, max_bytes: Some(keep) }).expect("purge");
    assert!(store.total_bytes().expect("total") <= keep);
    let left: Vec<bool> = sized.iter().map(|r| store.get("erin", &r.id).expect("get").is_some()).collect();
    assert_eq!(left, [false, false, true, true, true]);
    store.purge(u64::MAX / 2, Retention { max_age_secs: Some(0), max_bytes: None }).expect("purge all");
}

#[test]
fn sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("nested/responses.sqlite3")).expect("open");
    contract(Arc::new(store), "t");
}

#[test]
fn sqlite_store_survives_reopening_and_shares_the_file_between_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.sqlite3");
    let r = rec("keep", "o", 5, 10);
    {
        let store = SqliteStore::open(&path).expect("open");
        store.put(&r).expect("put");
    }
    // Two connections (two replicas, say) writing the same file at once.
    let one = Arc::new(SqliteStore::open(&path).expect("open"));
    let two = Arc::new(SqliteStore::open(&path).expect("open"));
    assert_eq!(two.get("o", "keep").expect("get"), Some(r));
    let writers: Vec<_> = [one.clone(), two.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, s)| {
            std::thread::spawn(move || {
                for i in 0..40 {
                    s.put(&rec(&format!("w{w}-{i}"), "o", 6, 100)).expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    for w in 0..2 {
        for i in 0..40 {
            assert!(one.get("o", &format!("w{w}-{i}")).expect("get").is_some());
        }
    }
}

#[test]
fn owner_is_a_digest_never_the_key() {
    assert_eq!(owner_of_key(None), "");
    let o = owner_of_key(Some("sk-secret"));
    assert_eq!(o.len(), 64);
    assert!(!o.contains("sk-secret"));
    assert_ne!(o, owner_of_key(Some("sk-other")));
}

#[test]
fn open_picks_the_backend_from_the_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(open("off", dir.path()).expect("off").is_none());
    let s = open("", dir.path()).expect("default").expect("some");
    assert!(s.describe().ends_with("responses.sqlite3"), "{}", s.describe());
    assert!(dir.path().join("responses.sqlite3").exists());
}

#[test]
fn postgres_store_keeps_the_contract() {
    let Ok(url) = std::env::var("WICK_TEST_POSTGRES_URL") else {
        eprintln!("notice: WICK_TEST_POSTGRES_URL unset; the PostgreSQL store test did not run (scripts/test.sh starts a server)");
        return;
    };
    let store = PostgresStore::connect(&url).expect("connect to the test PostgreSQL");
    let tag = format!("pg{}", std::process::id());
    contract(Arc::new(store), &tag);
    let reopened = PostgresStore::connect(&url).expect("reconnect");
    assert!(!reopened.describe().contains("password"));
}
