//! The model registry with scripted chat engines: routing by name and kind, load on demand,
//! least-recently-used eviction of idle models under the memory budget, the 503 when the models
//! in use (or the model itself) leave no room, idle unload and reload.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use super::fake::{Fake, Script};
use crate::registry::{Loaded, ModelEntry, ModelKind, Registry};
use crate::state::Ready;

const MIB: u64 = 1 << 20;

fn entry(name: &str, mib: u64, preload: bool, idle: Option<Duration>, loads: Arc<AtomicUsize>) -> ModelEntry {
    let names = vec![name.to_owned()];
    let ids = names.clone();
    ModelEntry {
        names,
        kind: ModelKind::Chat,
        preload,
        idle_unload: idle,
        bytes: mib * MIB,
        load: Some(Box::new(move || {
            loads.fetch_add(1, Ordering::SeqCst);
            let fake = Fake { idle: true, ..Fake::new(Script::Normal) };
            Ok(Loaded::Chat(Arc::new(Ready {
                backend: Arc::new(fake),
                model_ids: ids.clone(),
                created: 1,
                sampling: wick_engine::sampling::SamplingDefaults::default().resolved(),
                max_token_bytes: 4,
            })))
        })),
    }
}

fn loaded(r: &Registry) -> Vec<(String, bool)> {
    r.list().into_iter().map(|m| (m.names[0].clone(), m.loaded)).collect()
}

fn chat(l: Loaded) -> Arc<Ready> {
    match l {
        Loaded::Chat(r) => r,
        Loaded::Embedding(_) => panic!("a chat model"),
    }
}

#[tokio::test]
async fn budget_evicts_idle_models_least_recently_used_first() {
    let r = Registry::default();
    r.set_budget_mb(Some(250));
    let loads = Arc::new(AtomicUsize::new(0));
    for name in ["a", "b", "c"] {
        r.add(entry(name, 100, false, None, loads.clone())).expect("add");
    }
    r.add(entry("huge", 300, false, None, loads.clone())).expect("add");
    assert!(r.add(entry("a", 1, false, None, loads.clone())).is_err(), "names are unique");
    assert_eq!(r.get("nope", ModelKind::Chat).await.err().map(|e| e.status), Some(StatusCode::NOT_FOUND));
    let wrong = r.get("a", ModelKind::Embedding).await.err().expect("wrong kind");
    assert_eq!((wrong.status, wrong.code), (StatusCode::BAD_REQUEST, Some("model_not_supported")));

    drop(r.get("a", ModelKind::Chat).await.expect("a"));
    drop(r.get("b", ModelKind::Chat).await.expect("b"));
    drop(r.get("a", ModelKind::Chat).await.expect("a again, no load"));
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    drop(r.get("c", ModelKind::Chat).await.expect("c"));
    let want = |a, b, c| vec![("a".into(), a), ("b".into(), b), ("c".into(), c), ("huge".into(), false)];
    assert_eq!(loaded(&r), want(true, false, true), "b was the least recently used");

    // Models in use are never evicted: with a and c held, b cannot fit.
    let (ha, hc) = (r.get("a", ModelKind::Chat).await.expect("a"), r.get("c", ModelKind::Chat).await.expect("c"));
    let e = r.get("b", ModelKind::Chat).await.err().expect("no room");
    assert_eq!((e.status, e.code), (StatusCode::SERVICE_UNAVAILABLE, Some("model_cannot_fit")));
    assert!(e.retry_after.is_some());
    assert_eq!(loaded(&r), want(true, false, true));
    drop((ha, hc));
    drop(r.get("b", ModelKind::Chat).await.expect("b once a and c are idle"));
    assert_eq!(loaded(&r), want(false, true, true));

    let e = r.get("huge", ModelKind::Chat).await.err().expect("too big for the budget");
    assert_eq!((e.status, e.code), (StatusCode::SERVICE_UNAVAILABLE, Some("model_cannot_fit")));
    assert!(e.message.contains("250 MiB"), "{}", e.message);
    assert_eq!(loads.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn idle_models_unload_and_load_again() {
    let r = Registry::default();
    let loads = Arc::new(AtomicUsize::new(0));
    r.add(entry("main", 10, true, None, loads.clone())).expect("add");
    r.add(entry("lazy", 10, false, Some(Duration::from_millis(50)), loads.clone())).expect("add");
    let e = r.get("main", ModelKind::Chat).await.err().expect("preload not loaded yet");
    assert_eq!(e.code, Some("model_loading"));
    assert!(r.ready().is_err());
    r.preload().await.expect("preload");
    assert!(r.ready().is_ok(), "ready without the on-demand model");
    assert_eq!(loaded(&r), vec![("main".into(), true), ("lazy".into(), false)]);

    let held = chat(r.get("lazy", ModelKind::Chat).await.expect("loads on demand"));
    tokio::time::sleep(Duration::from_millis(80)).await;
    r.sweep().await;
    assert_eq!(loaded(&r)[1], ("lazy".into(), true), "in use: not unloaded");
    drop(held);
    r.sweep().await;
    assert_eq!(loaded(&r)[1], ("lazy".into(), true), "idle time counts from the end of the use");
    tokio::time::sleep(Duration::from_millis(80)).await;
    r.sweep().await;
    assert_eq!(loaded(&r)[1], ("lazy".into(), false), "unloaded after its idle time");
    assert_eq!(r.list()[1].context_length, Some(64), "still listed with its context length");
    drop(r.get("lazy", ModelKind::Chat).await.expect("loads again"));
    assert_eq!(loads.load(Ordering::SeqCst), 3);
    assert_eq!(loaded(&r)[0], ("main".into(), true), "a model without idle_unload_secs stays");
}
