//! `/v1/responses` through the router with the scripted engine: the response shape, the
//! streamed event sequence, reasoning items, the store (get, delete, input items,
//! `previous_response_id`, per-key isolation) and rejected fields.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};

use super::fake::{Fake, Script};
use super::{call, error_of, post, MODEL};
use crate::backend::Backend;
use crate::responses::store::sqlite::SqliteStore;
use crate::state::{AppState, Ready};

fn app_with_store(script: Script, keys: &[&str]) -> (Router, Arc<Fake>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("r.sqlite3")).expect("store");
    let fake = Arc::new(Fake::new(script));
    let state = AppState::new(keys.iter().map(|s| s.to_string()).collect(), Duration::from_secs(5), 1 << 16)
        .with_response_store(Some(Arc::new(store)));
    state.set_ready(Ready {
        backend: fake.clone(),
        model_ids: vec![MODEL.into()],
        created: 1,
        sampling: wick_engine::sampling::SamplingDefaults::default().resolved(),
        max_token_bytes: 4,
    });
    (crate::app::router(Arc::new(state), &[]), fake, dir)
}

fn body(extra: Value) -> String {
    let mut b = json!({"model": MODEL, "input": "hi"});
    if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    b.to_string()
}

fn authed(mut req: Request<Body>, key: &str) -> Request<Body> {
    req.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {key}").parse().expect("header"));
    req
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

/// The `(event, data)` pairs of an SSE body.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|ev| {
            let name = ev.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = ev.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_owned(), serde_json::from_str(data).expect("event json")))
        })
        .collect()
}

#[tokio::test]
async fn a_response_has_openai_shape_and_is_stored() {
    let (app, _, _dir) = app_with_store(Script::Normal, &[]);
    let (s, _, b) = call(&app, post("/v1/responses", body(json!({"metadata": {"k": "v"}})))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).expect("json");
    assert_eq!((v["object"].as_str(), v["status"].as_str()), (Some("response"), Some("completed")));
    assert!(v["id"].as_str().is_some_and(|i| i.starts_with("resp_")));
    let item = &v["output"][0];
    assert_eq!((item["type"].as_str(), item["role"].as_str()), (Some("message"), Some("assistant")));
    assert_eq!(item["content"][0], json!({"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}));
    assert_eq!(v["usage"]["output_tokens"], 3);
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(v["metadata"]["k"], "v");
    assert_eq!(v["store"], true);
    let id = v["id"].as_str().expect("id");
    let (s, _, stored) = call(&app, get(&format!("/v1/responses/{id}"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&stored).expect("json"), v);
    let (_, _, items) = call(&app, get(&format!("/v1/responses/{id}/input_items"))).await;
    let items: Value = serde_json::from_str(&items).expect("json");
    assert_eq!(items["object"], "list");
    assert_eq!(items["data"][0]["content"][0]["text"], "hi");
    assert_eq!(items["first_id"], items["data"][0]["id"]);
    let del = Request::delete(format!("/v1/responses/{id}")).body(Body::empty()).expect("req");
    let (s, _, b) = call(&app, del).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&b).expect("json")["deleted"], true);
    let (s, _, b) = call(&app, get(&format!("/v1/responses/{id}"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    error_of(&b);
}

#[tokio::test]
async fn store_false_keeps_nothing() {
    let (app, _, _dir) = app_with_store(Script::Normal, &[]);
    let (_, _, b) = call(&app, post("/v1/responses", body(json!({"store": false})))).await;
    let v: Value = serde_json::from_str(&b).expect("json");
    let (s, _, _) = call(&app, get(&format!("/v1/responses/{}", v["id"].as_str().expect("id")))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn previous_response_id_continues_the_conversation() {
    let (app, fake, _dir) = app_with_store(Script::Normal, &[]);
    let (_, _, b) = call(&app, post("/v1/responses", body(json!({"instructions": "terse"})))).await;
    let first: Value = serde_json::from_str(&b).expect("json");
    let next = body(json!({"input": "again", "previous_response_id": first["id"]}));
    let (s, _, b) = call(&app, post("/v1/responses", next)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let prompt = fake.decode(&fake.last().prompt_ids, false).expect("text");
    // Instructions do not carry over; the earlier turn does.
    assert_eq!(prompt, "user:hi;assistant:Hello!;user:again;");
    let second: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(second["previous_response_id"], first["id"]);
    let (_, _, items) =
        call(&app, get(&format!("/v1/responses/{}/input_items", second["id"].as_str().expect("id")))).await;
    let items: Value = serde_json::from_str(&items).expect("json");
    assert_eq!(items["data"].as_array().map(Vec::len), Some(1), "only this request's own input: {items}");
    let (s, _, b) = call(&app, post("/v1/responses", body(json!({"previous_response_id": "resp_nope"})))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&b)["param"], "previous_response_id");
}

#[tokio::test]
async fn one_key_cannot_see_anothers_responses() {
    let (app, _, _dir) = app_with_store(Script::Normal, &["sk-1", "sk-2"]);
    let (s, _, b) = call(&app, authed(post("/v1/responses", body(json!({}))), "sk-1")).await;
    assert_eq!(s, StatusCode::OK);
    let id = serde_json::from_str::<Value>(&b).expect("json")["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/responses/{id}");
    assert_eq!(call(&app, authed(get(&path), "sk-1")).await.0, StatusCode::OK);
    assert_eq!(call(&app, authed(get(&path), "sk-2")).await.0, StatusCode::NOT_FOUND);
    let cont = body(json!({"previous_response_id": id}));
    assert_eq!(call(&app, authed(post("/v1/responses", cont), "sk-2")).await.0, StatusCode::NOT_FOUND);
    let del = authed(Request::delete(&path).body(Body::empty()).expect("req"), "sk-2");
    assert_eq!(call(&app, del).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, get(&path)).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_stream_follows_the_documented_event_sequence() {
    let (app, _, _dir) = app_with_store(Script::Normal, &[]);
    let (s, h, b) = call(&app, post("/v1/responses", body(json!({"stream": true})))).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE].to_str().expect("ascii").starts_with("text/event-stream"));
    let evs = events(&b);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = names.iter().filter(|n| **n == "response.output_text.delta").count();
    let mut want =
        vec!["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    want.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    want.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, want);
    for (i, (name, data)) in evs.iter().enumerate() {
        assert_eq!(data["sequence_number"], i, "{name}");
        assert_eq!(data["type"], name.as_str());
    }
    let item_id = evs[2].1["item"]["id"].clone();
    assert!(evs[3..evs.len() - 1].iter().all(|(_, d)| d["item_id"] == item_id || d["item"]["id"] == item_id));
    assert!(evs[2..evs.len() - 1].iter().all(|(_, d)| d["output_index"] == 0));
    let text: String = evs
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect();
    assert_eq!(text, "Hello!");
    let done = &evs.last().expect("last").1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello!");
    let (s, _, stored) = call(&app, get(&format!("/v1/responses/{}", done["id"].as_str().expect("id")))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(&serde_json::from_str::<Value>(&stored).expect("json"), done);
}

#[tokio::test]
async fn thinking_becomes_a_reasoning_item_before_the_message() {
    let (app, _, _dir) = app_with_store(Script::Thinking, &[]);
    let (_, _, b) = call(&app, post("/v1/responses", body(json!({})))).await;
    let v: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["output"][0]["type"], "reasoning");
    assert_eq!(v["output"][0]["summary"][0], json!({"type": "summary_text", "text": "Let me think."}));
    assert_eq!(v["output"][1]["content"][0]["text"], "Answer.");
    assert!(v["usage"]["output_tokens_details"]["reasoning_tokens"].as_u64().is_some_and(|n| n > 0));
    let (_, _, b) = call(&app, post("/v1/responses", body(json!({"stream": true})))).await;
    let names: Vec<String> = events(&b).into_iter().map(|(n, _)| n).collect();
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap_or_else(|| panic!("no {n} in {names:?}"));
    assert!(pos("response.reasoning_summary_part.added") < pos("response.reasoning_summary_text.delta"));
    assert!(pos("response.reasoning_summary_text.done") < pos("response.reasoning_summary_part.done"));
    assert!(pos("response.reasoning_summary_part.done") < pos("response.content_part.added"));
    assert_eq!(names.iter().filter(|n| *n == "response.output_item.added").count(), 2);
}

#[tokio::test]
async fn an_engine_failure_mid_stream_is_response_failed() {
    let (app, _, _dir) = app_with_store(Script::FailAfterOne, &[]);
    let (_, _, b) = call(&app, post("/v1/responses", body(json!({"stream": true})))).await;
    let evs = events(&b);
    let (name, data) = evs.last().expect("events");
    assert_eq!(name, "response.failed");
    assert_eq!(data["response"]["status"], "failed");
    assert!(data["response"]["error"]["message"].as_str().is_some_and(|m| m.contains("exploded")));
}

#[tokio::test]
async fn rejected_fields_and_unknown_ids_use_the_envelope() {
    let (app, _, _dir) = app_with_store(Script::Normal, &[]);
    for (extra, param) in [
        (json!({"background": true}), "background"),
        (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
        (json!({"frobnicate": 1}), "frobnicate"),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            "input[0].content[0]",
        ),
    ] {
        let (s, _, b) = call(&app, post("/v1/responses", body(extra.clone()))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{extra}");
        assert_eq!(error_of(&b)["param"], param, "{extra}");
    }
    for path in ["/v1/responses/resp_nope", "/v1/responses/resp_nope/input_items"] {
        let (s, _, b) = call(&app, get(path)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        error_of(&b);
    }
}
