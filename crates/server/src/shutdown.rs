//! Shutdown signals: resolves on the first SIGTERM or Ctrl-C and tells every watcher; and the
//! shutdown deadline, after which the requests still running end cleanly (streams with a
//! `server_shutting_down` error event and `[DONE]`, others with a 503) instead of being cut.

use std::sync::OnceLock;

use tokio::sync::watch;

/// The process-wide deadline flag (one server per process; tests that never set it lose nothing).
fn deadline() -> &'static watch::Sender<bool> {
    static DEADLINE: OnceLock<watch::Sender<bool>> = OnceLock::new();
    DEADLINE.get_or_init(|| watch::channel(false).0)
}

/// The grace is over: every request still running ends now.
pub fn end_streams() {
    deadline().send_replace(true);
}

/// Resolves once [`end_streams`] has been called.
pub async fn streams_ended() {
    let mut rx = deadline().subscribe();
    let _ = rx.wait_for(|v| *v).await;
}

/// A handle that flips to `true` on the first SIGTERM or Ctrl-C.
pub fn on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: no new connections; finishing in-flight requests");
        let _ = tx.send(true);
    });
    rx
}

/// Waits until `rx` turns true (or its sender is gone).
pub async fn triggered(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
