//! Process lifecycle: draining (readiness goes 503 while requests are still
//! served) and then stopping (the server and every stream end).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Shared shutdown state; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    draining: CancellationToken,
    stopping: CancellationToken,
}

impl Lifecycle {
    /// Whether the instance is shutting down and should get no new traffic.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Starts draining: `/readyz` answers 503 from now on.
    pub fn begin_drain(&self) {
        self.draining.cancel();
    }

    /// Stops the server: graceful shutdown begins and long-lived work ends.
    pub fn stop(&self) {
        self.draining.cancel();
        self.stopping.cancel();
    }

    /// Resolves once [`Lifecycle::stop`] was called.
    pub async fn stopped(&self) {
        self.stopping.cancelled().await;
    }

    /// Waits for SIGTERM or ctrl-c, drains for `drain`, then stops. A second
    /// signal while draining stops at once.
    pub async fn stop_on_signal(self, drain: Duration) {
        shutdown_signal().await;
        tracing::info!(?drain, "shutdown requested: draining");
        self.begin_drain();
        tokio::select! {
            () = tokio::time::sleep(drain) => {}
            () = shutdown_signal() => tracing::info!("second signal: stopping now"),
        }
        tracing::info!("stopping");
        self.stop();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
