//! Server-sent events: turns engine events into `data:` lines through a [`ChunkWriter`],
//! sends keep-alive comments while waiting, reports a mid-stream failure as a
//! `data: {"error":...}` event, and always ends with `data: [DONE]`, also when the server's
//! shutdown deadline ends the stream early (a `server_shutting_down` error event first).

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, StreamExt};
use wick_engine::Event;

use crate::error::ApiError;

/// Formats one endpoint's chunks.
pub trait ChunkWriter: Send + 'static {
    /// Chunks sent before any engine event (e.g. echoed prompts).
    fn start(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Chunks for one engine event (never called with `Event::Error`).
    fn event(&mut self, ev: Event) -> Vec<String>;
}

enum State<W> {
    Start(BoxStream<'static, Event>, W),
    Running(BoxStream<'static, Event>, W),
    Finished,
}

/// The chunk data strings of a whole stream, `[DONE]` included.
pub fn data_stream<W: ChunkWriter>(events: BoxStream<'static, Event>, writer: W) -> BoxStream<'static, String> {
    stream::unfold(State::Start(events, writer), |state| async move {
        match state {
            State::Finished => None,
            State::Start(events, mut w) => Some((w.start(), State::Running(events, w))),
            State::Running(mut events, mut w) => match next_or_deadline(&mut events).await {
                Next::Deadline => {
                    Some((vec![ApiError::shutting_down().to_json(), "[DONE]".to_owned()], State::Finished))
                }
                Next::Event(Event::Error(m)) => {
                    let err = ApiError::internal(format!("generation failed: {m}"));
                    Some((vec![err.to_json(), "[DONE]".to_owned()], State::Finished))
                }
                Next::Event(ev @ Event::Done { .. }) => {
                    let mut out = w.event(ev);
                    out.push("[DONE]".to_owned());
                    Some((out, State::Finished))
                }
                Next::Event(ev) => Some((w.event(ev), State::Running(events, w))),
                Next::End => {
                    let err = ApiError::internal("generation ended without a result");
                    Some((vec![err.to_json(), "[DONE]".to_owned()], State::Finished))
                }
            },
        }
    })
    .flat_map(stream::iter)
    .boxed()
}

enum Next {
    Event(Event),
    End,
    Deadline,
}

/// The next engine event, unless the shutdown deadline comes first.
async fn next_or_deadline(events: &mut BoxStream<'static, Event>) -> Next {
    tokio::select! {
        biased;
        ev = events.next() => ev.map_or(Next::End, Next::Event),
        () = crate::shutdown::streams_ended() => Next::Deadline,
    }
}

/// An SSE response over `events`.
pub fn respond<W: ChunkWriter>(events: BoxStream<'static, Event>, writer: W, keep_alive: Duration) -> Response {
    let body = data_stream(events, writer).map(|data| Ok::<_, Infallible>(SseEvent::default().data(data)));
    Sse::new(body).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive")).into_response()
}
