//! The HTTP/1.1 accept loop.
//!
//! `axum::serve` would do, but it sniffs every connection for an HTTP/2
//! preface first, and the 24 bytes it reads ahead make hyper grow the
//! connection's read buffer from 8 to 16 KiB; with thousands of idle event
//! streams that is most of their memory. metacast speaks HTTP/1.1 only
//! (browsers' `EventSource` and curl use it without TLS anyway), so it
//! drives hyper's HTTP/1 connections directly. It also bounds how long a
//! client may take to send its request head, which `axum::serve` does not.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `stop` resolves, then stops
/// accepting and waits for open connections to finish (they end their
/// streams on the same signal). A client that takes longer than
/// `head_timeout` to send a request head (slow-loris) has its connection
/// closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    head_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let socket = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        // Events are small writes that must leave at once.
        if let Err(err) = socket.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(socket), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
