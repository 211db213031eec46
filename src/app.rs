//! Wiring: from [`Settings`] to a running server.

use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::auth::JwtKeys;
use crate::cache::Redis;
use crate::config::Settings;
use crate::db::metadata_batch::MetadataBatches;
use crate::document::DocumentCache;
use crate::events::hub::Hub;
use crate::events::relay::OutboxMarks;
use crate::lifecycle::Lifecycle;
use crate::state::AppState;

/// Lanes of room metadata batches: each keeps one Postgres connection, and
/// two let one batch fill while the other is in Postgres.
const METADATA_LANES: usize = 2;

/// Assembles the shared state from already-connected stores.
pub fn build_state(settings: Settings, db: PgPool, redis: Redis) -> anyhow::Result<AppState> {
    let keys = JwtKeys::new(&settings.jwt)?;
    let redis_keys = crate::cache::Keys::new(&settings.redis_prefix);
    let lifecycle = Lifecycle::default();
    let documents = Arc::new(DocumentCache::new(
        settings.document_cache_bytes,
        settings.document_cache_max_age,
    ));
    let hub = Hub::new(
        redis.clone(),
        redis_keys.clone(),
        lifecycle.clone(),
        documents.clone(),
    );
    let outbox_marks = OutboxMarks::spawn(db.clone(), lifecycle.clone());
    let metadata_batches = MetadataBatches::spawn(db.clone(), METADATA_LANES, lifecycle.clone());
    Ok(AppState::new(crate::state::Shared {
        bounds: crate::bounds::Bounds::new(&settings),
        db,
        redis,
        redis_keys,
        settings: Arc::new(settings),
        jwt_keys: Arc::new(keys),
        lifecycle,
        hub,
        documents,
        outbox_marks,
        metadata_batches,
        metrics: crate::metrics::handle(),
    }))
}

/// Connects to Postgres (creating and migrating the database) and Redis.
pub async fn connect(settings: Settings) -> anyhow::Result<AppState> {
    // Fail on key problems before touching any store.
    JwtKeys::new(&settings.jwt)?;
    let db = crate::db::connect_and_migrate(&settings).await?;
    let redis = crate::cache::connect(&settings)?;
    build_state(settings, db, redis)
}

/// Starts the instance's background work: lease sweeping, session
/// reconciliation, the outbox relay and the event wake-up subscription.
pub fn spawn_background(state: &AppState) -> anyhow::Result<()> {
    crate::presence::sweeper::spawn(state.clone());
    crate::events::relay::spawn(state.clone());
    let clients = crate::cache::subscription_clients(&state.settings)?;
    state.hub.spawn_listener(clients);
    Ok(())
}

/// Binds the listener; separate from [`serve`] so callers can print the
/// address (and `--dev` its token) once the port is really ours.
pub async fn bind(state: &AppState) -> anyhow::Result<TcpListener> {
    let addr = state.settings.listen;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("METACAST_LISTEN: cannot listen on {addr}"))
}

/// Serves until SIGTERM / ctrl-c, draining first so load balancers move away.
pub async fn serve(state: AppState, listener: TcpListener) -> anyhow::Result<()> {
    let lifecycle = state.lifecycle.clone();
    tokio::spawn(
        lifecycle
            .clone()
            .stop_on_signal(state.settings.shutdown_drain),
    );
    spawn_background(&state)?;
    // A request head slower than a whole request may take cannot be
    // answered in time either: one timeout bounds both.
    let head_timeout = state.settings.request_timeout;
    let app = crate::api::router(state);
    tracing::info!(addr = %listener.local_addr()?, "metacast listening");
    crate::http::serve(listener, app, head_timeout, async move {
        lifecycle.stopped().await;
    })
    .await;
    Ok(())
}
