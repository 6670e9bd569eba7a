//! `/v1/responses`: create (one `response` object, or its event stream), get, delete and list
//! input items. Creating maps the request onto the chat path (`responses::request`,
//! `responses::input`, `routes::chat::prepare`), so templates, tools, structured output and
//! reasoning work as in chat completions. A stored response is committed before the answer
//! (or the stream's last event) goes out; a stream the client drops is cancelled, not stored.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::Value;
use wick_engine::{Event, FinishReason};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::extract::Json;
use crate::generation;
use crate::openai::common::unix_now;
use crate::openai::responses::{CreateResponse, Deleted, ItemList, ResponseError, ResponseObject};
use crate::output;
use crate::responses::output::{self as items, status_of};
use crate::responses::request::{self, Echo};
use crate::responses::store::{Record, ResponseStore};
use crate::responses::{self, blocking, input, not_found};
use crate::routes::chat::{self, Prepared, Prompt};
use crate::state::AppState;
use crate::validate;

/// Most items per `input_items` page.
const MAX_LIMIT: usize = 100;

/// Stores a finished response (when it is to be stored).
struct Saver {
    store: Option<Arc<dyn ResponseStore>>,
    owner: String,
    input_items: Vec<Value>,
    context: Vec<Value>,
}

impl Saver {
    async fn save(&self, resp: &ResponseObject) -> Result<(), ApiError> {
        let Some(store) = &self.store else { return Ok(()) };
        let record = Record {
            id: resp.id.clone(),
            owner: self.owner.clone(),
            created_at: resp.created_at,
            response: serde_json::to_string(resp).map_err(|e| ApiError::internal(e.to_string()))?,
            input_items: Value::Array(self.input_items.clone()).to_string(),
            context: Value::Array(self.context.clone()).to_string(),
        };
        blocking(store, move |s| s.put(&record)).await
    }
}

fn reasoning_tokens(backend: &dyn Backend, text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        backend.encode(text, false).map_or(0, |ids| ids.len())
    }
}

/// Creates a response; with `stream: true`, its events as server-sent events (`event:` the
/// event type, `data:` the event, with increasing `sequence_number`).
#[utoipa::path(post, path = "/v1/responses", tag = "OpenAI", request_body = CreateResponse,
    responses((status = 200, description = "The response, or its events as server-sent events", content(
        (ResponseObject = "application/json"),
        (crate::openapi::SseEvent = "text/event-stream"),
    ))))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(req): Json<CreateResponse>,
) -> Result<Response, ApiError> {
    let ready = state.chat(&req.model).await?;
    let backend = ready.backend.as_ref();
    let store = state.response_store.clone();
    let request::Plan { mut v, tool_req, structured, effort, echo } =
        request::plan(&req, backend.vocab_size(), &ready.sampling, store.is_some())?;
    let owner = responses::owner(&state, &headers);
    let mut context: Vec<Value> = Vec::new();
    if let Some(prev) = &req.previous_response_id {
        let Some(store) = &store else { return Err(not_found(prev, "previous_response_id")) };
        let (o, p) = (owner.clone(), prev.clone());
        let rec =
            blocking(store, move |s| s.get(&o, &p)).await?.ok_or_else(|| not_found(prev, "previous_response_id"))?;
        let earlier: Vec<Value> = serde_json::from_str(&rec.context).unwrap_or_default();
        let resp: Value = serde_json::from_str(&rec.response).unwrap_or_default();
        context.extend(earlier);
        context.extend(resp["output"].as_array().cloned().unwrap_or_default());
    }
    let inherited = context.len();
    let own = input::items(req.input.as_ref())?;
    if own.is_empty() && req.previous_response_id.is_none() {
        return Err(ApiError::invalid_value("input", "`input` must hold at least one item."));
    }
    context.extend(own.iter().cloned());
    let labelled: Vec<(String, Value)> = context
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at =
                if i < inherited { "previous_response_id".to_owned() } else { format!("input[{}]", i - inherited) };
            (at, item.clone())
        })
        .collect();
    let messages = input::to_messages(echo.instructions.as_deref(), &labelled)?;
    let text_bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    validate::fits_by_bytes(text_bytes, backend.max_model_len(), ready.max_token_bytes, "input")?;
    let extra = chat::template_kwargs(None, effort.as_ref(), "reasoning.effort", &backend.chat_template_source())?;
    let prompt = Prompt { messages, text_bytes, tool_req: tool_req.as_ref(), structured, extra };
    let Prepared { prompt_ids, format } = chat::prepare(&state, &ready, &mut v, prompt, "input").await?;
    let id = items::new_id("resp");
    let created = unix_now();
    tracing::info!(response_id = %id, user = req.user.as_deref().unwrap_or(""), prompt_tokens = prompt_ids.len(), stream = v.stream, previous = req.previous_response_id.as_deref().unwrap_or(""), "response");
    let tracked = generation::submit(backend, &id, prompt_ids, v.params, 1, v.cache_salt)?;
    let events = generation::merge(vec![tracked], 1);
    let saver = Saver { store: store.filter(|_| echo.store), owner, input_items: own, context };
    if v.stream {
        let run = Run {
            events,
            w: items::Stream::new(&format),
            echo,
            saver,
            id,
            created,
            backend: ready.backend.clone(),
            finish: None,
            started: false,
        };
        return Ok(respond(run, state.sse_keep_alive));
    }
    let (choices, usage) = generation::collect(events, 1).await?;
    let choice = choices.into_iter().next().unwrap_or_default();
    let m = output::parse_all(&format, &choice.text);
    let status = status_of(choice.finish);
    let thought = reasoning_tokens(backend, m.reasoning.as_deref().unwrap_or(""));
    let resp = echo.response(&id, created, status, items::items(m, status), Some(responses::usage(usage, thought)));
    saver.save(&resp).await?;
    Ok(axum::Json(resp).into_response())
}

/// The state of one streamed response.
struct Run {
    events: BoxStream<'static, Event>,
    w: items::Stream,
    echo: Echo,
    saver: Saver,
    id: String,
    created: u64,
    backend: Arc<dyn Backend>,
    finish: Option<FinishReason>,
    started: bool,
}

impl Run {
    fn failed(&mut self, message: String) -> Vec<items::Sse> {
        let mut resp = self.echo.response(&self.id, self.created, "failed", self.w.output.clone(), None);
        resp.error = Some(ResponseError { code: "server_error".into(), message });
        self.w.failed(&resp)
    }
}

fn respond(run: Run, keep_alive: std::time::Duration) -> Response {
    let body = stream::unfold(Some(run), |state| async move {
        let mut r = state?;
        if !r.started {
            r.started = true;
            let resp = r.echo.response(&r.id, r.created, "in_progress", Vec::new(), None);
            let out = r.w.start(&resp);
            return Some((out, Some(r)));
        }
        match r.events.next().await {
            Some(Event::Token { text, .. }) => Some((r.w.text(&text), Some(r))),
            Some(Event::Finished { reason, text, .. }) => {
                r.finish = Some(reason);
                Some((r.w.finish(&text, status_of(Some(reason))), Some(r)))
            }
            Some(Event::Done { usage, .. }) => {
                let status = status_of(r.finish);
                let thought = reasoning_tokens(r.backend.as_ref(), &r.w.reasoning_text);
                let resp = r.echo.response(
                    &r.id,
                    r.created,
                    status,
                    r.w.output.clone(),
                    Some(responses::usage(usage, thought)),
                );
                match r.saver.save(&resp).await {
                    Ok(()) => Some((r.w.end(&resp), None)),
                    Err(e) => Some((r.failed(e.message), None)),
                }
            }
            Some(Event::Error(m)) => Some((r.failed(format!("generation failed: {m}")), None)),
            None => Some((r.failed("generation ended without a result".into()), None)),
        }
    })
    .flat_map(stream::iter)
    .map(|(kind, data)| Ok::<_, Infallible>(SseEvent::default().event(kind).data(data)));
    Sse::new(body).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive")).into_response()
}

/// Query parameters a route takes; any other is a 400 naming it.
fn only(query: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::unsupported(k, format!("The query parameter `{k}` is not supported here."))),
        None => Ok(()),
    }
}

async fn record(state: &AppState, headers: &HeaderMap, id: &str) -> Result<Record, ApiError> {
    state.ready()?;
    let Some(store) = &state.response_store else { return Err(not_found(id, "response_id")) };
    let (owner, key) = (responses::owner(state, headers), id.to_owned());
    blocking(store, move |s| s.get(&owner, &key)).await?.ok_or_else(|| not_found(id, "response_id"))
}

/// A stored response (this caller's only: another API key's is a 404).
#[utoipa::path(get, path = "/v1/responses/{id}", tag = "OpenAI",
    params(("id" = String, Path, description = "A response id")),
    responses((status = 200, body = ResponseObject)))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&query, &[])?;
    let rec = record(&state, &headers, &id).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], rec.response).into_response())
}

/// Deletes a stored response.
#[utoipa::path(delete, path = "/v1/responses/{id}", tag = "OpenAI",
    params(("id" = String, Path, description = "A response id")),
    responses((status = 200, body = Deleted)))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.ready()?;
    let Some(store) = &state.response_store else { return Err(not_found(&id, "response_id")) };
    let (owner, key) = (responses::owner(&state, &headers), id.clone());
    if !blocking(store, move |s| s.delete(&owner, &key)).await? {
        return Err(not_found(&id, "response_id"));
    }
    Ok(axum::Json(Deleted { id, object: "response", deleted: true }).into_response())
}

/// The input items of a stored response, a page at a time.
#[utoipa::path(get, path = "/v1/responses/{id}/input_items", tag = "OpenAI",
    params(
        ("id" = String, Path, description = "A response id"),
        ("limit" = Option<u32>, Query, description = "Items per page, 1 to 100 (default 20)", minimum = 1, maximum = 100),
        ("order" = Option<String>, Query, description = "`asc` or `desc` (default)"),
        ("after" = Option<String>, Query, description = "The item id to list after"),
    ),
    responses((status = 200, body = ItemList)))]
pub async fn input_items(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&query, &["limit", "order", "after"])?;
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => return Err(ApiError::invalid_value("limit", format!("`limit` must be between 1 and {MAX_LIMIT}."))),
    };
    let desc = match query.get("order").map(String::as_str) {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(ApiError::invalid_value("order", "`order` must be asc or desc.")),
    };
    let rec = record(&state, &headers, &id).await?;
    let mut all: Vec<Value> = serde_json::from_str(&rec.input_items).unwrap_or_default();
    if desc {
        all.reverse();
    }
    let start = match query.get("after") {
        None => 0,
        Some(after) => match all.iter().position(|i| i["id"].as_str() == Some(after.as_str())) {
            Some(p) => p + 1,
            None => return Err(ApiError::invalid_value("after", format!("No input item {after:?} in this response."))),
        },
    };
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + page.len() < all.len();
    let id_of = |v: Option<&Value>| v.and_then(|i| i["id"].as_str()).map(str::to_owned);
    let list =
        ItemList { object: "list", first_id: id_of(page.first()), last_id: id_of(page.last()), has_more, data: page };
    Ok(axum::Json(list).into_response())
}
