//! The accept loop: wick's own instead of `axum::serve`, for what a server facing hostile clients
//! needs and axum's does not offer:
//! - a cap on open connections (further clients wait in the listen backlog);
//! - a header read timeout (also the idle timeout of a kept-alive connection), so partial
//!   headers cannot hold a connection open (the body timeout is the extractor's, see `extract`);
//! - hyper's own answers to malformed HTTP (an empty-bodied 400, 414 or 431) rewritten into the
//!   OpenAI error envelope ([`EnvelopeIo`]);
//! - graceful shutdown: on the signal, stop accepting and let in-flight requests finish; when
//!   the grace runs out, end every stream cleanly (`shutdown::end_streams`: an error event and
//!   `[DONE]`), give them a moment to flush, and return.

use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::error::ApiError;
use crate::shutdown;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// How long ended streams get to reach their clients after the shutdown deadline.
const FLUSH_AFTER_DEADLINE: Duration = Duration::from_secs(2);

/// Serves `router` on `listener` until `signal` turns true, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    signal: watch::Receiver<bool>,
    grace: Duration,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // HTTP/1 only: the version sniffing of `auto` would wait for the first bytes with no timeout.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let mut stop = pin!(shutdown::triggered(signal));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.map_err(io::Error::other)?,
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = builder.serve_connection(TokioIo::new(EnvelopeIo::new(stream)), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let mut drained = pin!(graceful.shutdown());
    tokio::select! {
        () = &mut drained => return Ok(()),
        () = tokio::time::sleep(grace) => {}
    }
    tracing::warn!("shutdown timeout reached with requests in flight; ending them");
    shutdown::end_streams();
    if tokio::time::timeout(FLUSH_AFTER_DEADLINE, drained).await.is_err() {
        tracing::warn!("connections still open after the shutdown deadline; closing them");
    }
    Ok(())
}

/// A connection's IO that swaps hyper's automatic answer to unparseable HTTP (a status line,
/// `connection: close`, `content-length: 0` and `date`, nothing else) for the same status with a JSON envelope.
/// Every other write passes through untouched. Writes are not vectored, so hyper hands a
/// response head over in one buffer.
pub struct EnvelopeIo<T> {
    inner: T,
    /// A replacement being written: its bytes, how many are out, and the length of hyper's
    /// buffer it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> EnvelopeIo<T> {
    pub fn new(inner: T) -> Self {
        Self { inner, pending: None }
    }
}

/// The envelope response for one of hyper's automatic error heads, or `None` for any other bytes.
pub fn rewrite_error_head(buf: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(buf).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line.strip_prefix("HTTP/1.1 ").or_else(|| status_line.strip_prefix("HTTP/1.0 "))?;
    let (status, message, code) = match rest.get(..3)? {
        "400" => (400, "The request is not valid HTTP/1.1 (request line, header or length).", "bad_request"),
        "414" => (414, "The request URI is too long.", "uri_too_long"),
        "431" => (431, "The request headers are too large.", "request_header_fields_too_large"),
        _ => return None,
    };
    let mut date = None;
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower == "content-length: 0" || lower == "connection: close" {
            continue;
        }
        if lower.starts_with("date: ") {
            date = Some(line);
            continue;
        }
        return None;
    }
    let status = axum::http::StatusCode::from_u16(status).ok()?;
    let mut err = ApiError::from_status(status, message);
    err.code = Some(code);
    let body = err.to_json();
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(d) = date {
        out.push_str(d);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

impl<T: AsyncRead + Unpin> AsyncRead for EnvelopeIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for EnvelopeIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            match rewrite_error_head(buf) {
                Some(bytes) => this.pending = Some((bytes, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        let Some((bytes, written, claimed)) = this.pending.as_mut() else { return Poll::Ready(Ok(0)) };
        while *written < bytes.len() {
            match ready!(Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => *written += n,
                Err(e) => {
                    this.pending = None;
                    return Poll::Ready(Err(e));
                }
            }
        }
        let claimed = (*claimed).min(buf.len());
        this.pending = None;
        Poll::Ready(Ok(claimed))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_heads_become_envelopes_and_nothing_else_changes() {
        let head = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 01:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_error_head(head).expect("rewritten")).expect("utf8");
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).expect("body");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"]["code"], "bad_request");
        assert!(out.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(
            rewrite_error_head(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n").is_some()
        );
        // Our own answers carry a content type and a body: untouched.
        assert!(rewrite_error_head(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"
        )
        .is_none());
        assert!(rewrite_error_head(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite_error_head(b"data: {\"x\":1}\n\n").is_none());
    }
}
