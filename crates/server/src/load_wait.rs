//! A streaming request for a model that is not loaded yet: the SSE answer starts at once and
//! sends keep-alive comments while the model loads (so clients and proxies do not time out),
//! then carries the handler's own stream; a failure (the load, or the validation that needs
//! the model — the handlers check the rest before the stream starts)
//! becomes an error event and `data: [DONE]`, as mid-stream errors do. A client that goes away
//! drops the stream, and with it the handler's response and its engine request.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;

/// The SSE response that waits for `load`, then streams `then()`'s answer.
pub fn streaming<L, F, Fut>(keep_alive: Duration, load: L, then: F) -> Response
where
    L: Future<Output = Result<(), ApiError>> + Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(keep_alive);
        tick.tick().await;
        let mut load = std::pin::pin!(load);
        let loaded = loop {
            tokio::select! {
                r = &mut load => break r,
                _ = tick.tick() => {
                    if tx.send(Ok(Bytes::from_static(b": keep-alive\n\n"))).await.is_err() {
                        return;
                    }
                }
            }
        };
        let answer = match loaded {
            Ok(()) => then().await,
            Err(e) => Err(e),
        };
        let resp = match answer {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap_or_default();
                let _ = tx.send(Ok(event(&String::from_utf8_lossy(&body)))).await;
                let _ = tx.send(Ok(event("[DONE]"))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Ok(event(&e.to_json()))).await;
                let _ = tx.send(Ok(event("[DONE]"))).await;
                return;
            }
        };
        let mut body = resp.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            let Ok(bytes) = chunk else { break };
            if tx.send(Ok(bytes)).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(resp: Response) -> String {
        String::from_utf8(axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body").to_vec()).expect("utf8")
    }

    #[tokio::test]
    async fn keep_alives_while_loading_then_the_stream() {
        let load = async {
            tokio::time::sleep(Duration::from_millis(350)).await;
            Ok(())
        };
        let then = || async {
            let mut r = Response::new(Body::from("data: {\"x\":1}\n\ndata: [DONE]\n\n"));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            Ok(r)
        };
        let text = body(streaming(Duration::from_millis(100), load, then)).await;
        let (waiting, rest) = text.split_once("data: ").expect("data after the wait");
        assert!(waiting.matches(": keep-alive\n\n").count() >= 2, "{text:?}");
        assert_eq!(rest, "{\"x\":1}\n\ndata: [DONE]\n\n");
    }

    #[tokio::test]
    async fn a_failed_load_or_handler_is_an_error_event() {
        let load = async { Err(ApiError::internal("no room")) };
        let text = body(streaming(Duration::from_secs(5), load, || async { Ok(Response::new(Body::empty())) })).await;
        assert!(text.starts_with("data: {\"error\":") && text.contains("no room"), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
        let then = || async { Err::<Response, _>(ApiError::invalid(Some("n"), "bad n")) };
        let text = body(streaming(Duration::from_secs(5), async { Ok(()) }, then)).await;
        assert!(text.contains("\"param\":\"n\"") && text.ends_with("data: [DONE]\n\n"), "{text}");
    }
}
