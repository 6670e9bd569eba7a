//! Generation through the HTTP layer: response and chunk shapes, parameters forwarded to the
//! engine, mid-stream errors, cancellation on drop, legacy completions.

use std::time::Duration;

use axum::http::{header, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::fake::Script;
use super::{app, app_with, call, chat, post, sse_data, MODEL};

#[tokio::test]
async fn chat_completion_shape_and_forwarded_params() {
    let (app, fake) = app(Script::Normal);
    let body =
        chat(json!({"temperature": 0.3, "seed": 5, "stop": "x", "logprobs": true, "top_logprobs": 1, "max_tokens": 7}));
    let (s, _, b) = call(&app, post("/v1/chat/completions", body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().is_some_and(|id| id.starts_with("chatcmpl-")));
    assert_eq!(v["model"], MODEL);
    assert!(v["system_fingerprint"].is_string());
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], "Hello!");
    assert_eq!(c["finish_reason"], "stop");
    let lp = &c["logprobs"]["content"][0];
    assert_eq!(lp["token"], "Hel");
    assert_eq!(lp["bytes"], json!([72, 101, 108]));
    assert_eq!(lp["top_logprobs"][0]["token"], "Hel");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], v["usage"]["prompt_tokens"].as_u64().expect("u64") + 3);
    let req = fake.last();
    assert_eq!(req.params.temperature, 0.3);
    assert_eq!(req.params.seed, Some(5));
    assert_eq!(req.params.stop, vec!["x".to_string()]);
    assert_eq!(req.params.max_tokens, 7);
    assert_eq!(req.params.logprobs, Some(1));
}

#[tokio::test]
async fn chat_stream_follows_openai_chunk_order() {
    let (app, _) = app(Script::Normal);
    let body = chat(json!({"stream": true, "n": 2, "stream_options": {"include_usage": true}}));
    let (s, h, b) = call(&app, post("/v1/chat/completions", body)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE].to_str().expect("ascii").starts_with("text/event-stream"));
    let data = sse_data(&b);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("chunk json")).collect();
    let id = chunks[0]["id"].clone();
    assert!(chunks.iter().all(|c| c["id"] == id && c["object"] == "chat.completion.chunk" && c["model"] == MODEL));
    let usage_chunk = chunks.last().expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 6);
    for index in 0..2 {
        let mine: Vec<&Value> = chunks.iter().filter(|c| c["choices"][0]["index"] == index).collect();
        assert_eq!(mine[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(mine.iter().all(|c| c["usage"].is_null()));
        let text: String = mine.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(text, "Hello!");
        let last = mine.last().expect("finish chunk");
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(mine.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null()).count(), 1);
    }
}

#[tokio::test]
async fn mid_stream_error_is_an_error_event_then_done() {
    let (app, _) = app(Script::FailAfterOne);
    let (s, _, b) = call(&app, post("/v1/chat/completions", chat(json!({"stream": true})))).await;
    assert_eq!(s, StatusCode::OK);
    let data = sse_data(&b);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let err: Value = serde_json::from_str(&data[data.len() - 2]).expect("json");
    assert!(err["error"]["message"].as_str().is_some_and(|m| m.contains("kv cache exploded")));
}

#[tokio::test]
async fn dropping_the_request_cancels_it_in_the_engine() {
    // Non-streaming: the handler future owns the receiver.
    let (app, fake) = app(Script::Hang);
    let task = tokio::spawn({
        let app = app.clone();
        async move { app.oneshot(post("/v1/chat/completions", chat(json!({})))).await }
    });
    while fake.held.lock().expect("lock").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!fake.all_cancelled());
    task.abort();
    let _ = task.await;
    assert!(fake.all_cancelled());
    // Streaming: the response body owns it.
    let (app, fake) = app_with(Script::Hang, &[], &[], true);
    let resp = app.oneshot(post("/v1/chat/completions", chat(json!({"stream": true})))).await.expect("resp");
    assert!(!fake.all_cancelled());
    drop(resp);
    assert!(fake.all_cancelled());
}

#[tokio::test]
async fn legacy_completions_with_prompts_echo_and_logprobs() {
    let (app, fake) = app(Script::Normal);
    let body = json!({"model": MODEL, "prompt": ["ab", "cd"], "n": 2, "logprobs": 1, "max_tokens": 5});
    let (s, _, b) = call(&app, post("/v1/completions", body.to_string())).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["object"], "text_completion");
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["text"], "Hello!");
        assert_eq!(c["logprobs"]["tokens"][0], "Hel");
        assert_eq!(c["logprobs"]["text_offset"], json!([0, 3, 4]));
    }
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(fake.submitted.lock().expect("lock").len(), 2);
    let echo = json!({"model": MODEL, "prompt": "ab", "echo": true});
    let (_, _, b) = call(&app, post("/v1/completions", echo.to_string())).await;
    let v: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["choices"][0]["text"], "abHello!");
    assert_eq!(fake.last().params.max_tokens, 16, "OpenAI's legacy default");
}

#[tokio::test]
async fn thinking_goes_to_reasoning_fields_streamed_and_not_never_to_content() {
    let (app, _) = app(Script::Thinking);
    let (s, _, b) = call(&app, post("/v1/chat/completions", chat(json!({})))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).expect("json");
    let m = &v["choices"][0]["message"];
    assert_eq!(m["content"], "Answer.");
    assert_eq!(m["reasoning_content"], "Let me think.");
    assert_eq!(m["reasoning"], "Let me think.");

    let (_, _, b) = call(&app, post("/v1/chat/completions", chat(json!({"stream": true})))).await;
    let data = sse_data(&b);
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("chunk")).collect();
    let field =
        |name: &str| -> String { chunks.iter().filter_map(|c| c["choices"][0]["delta"][name].as_str()).collect() };
    assert_eq!(field("content"), "Answer.");
    assert_eq!(field("reasoning_content"), "Let me think.");
    assert_eq!(field("reasoning"), "Let me think.");
    assert!(chunks.iter().all(|c| !c["choices"][0]["delta"]["content"].as_str().unwrap_or("").contains("think")));
}
