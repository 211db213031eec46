//! The state every handler shares. Cloned for every request (axum hands
//! each extractor its own copy), so a clone is one reference count.

use std::sync::Arc;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::auth::JwtKeys;
use crate::bounds::Bounds;
use crate::cache::{Keys, Redis};
use crate::config::Settings;
use crate::db::metadata_batch::MetadataBatches;
use crate::document::DocumentCache;
use crate::events::hub::Hub;
use crate::events::relay::OutboxMarks;
use crate::lifecycle::Lifecycle;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub db: PgPool,
    pub redis: Redis,
    /// Names of this instance's Redis keys (under the configured prefix).
    pub redis_keys: Keys,
    pub settings: Arc<Settings>,
    /// The keys tokens are verified (and, for `token` and tests, minted) with.
    pub jwt_keys: Arc<JwtKeys>,
    pub lifecycle: Lifecycle,
    /// This instance's event fan-out to its stream subscribers.
    pub hub: Hub,
    /// Recently read room documents (see [`DocumentCache`] for coherence).
    pub documents: Arc<DocumentCache>,
    /// Batches the deletes of published outbox rows.
    pub outbox_marks: OutboxMarks,
    /// Room metadata compare-and-sets, many per statement.
    pub metadata_batches: MetadataBatches,
    pub metrics: PrometheusHandle,
    /// What one client's requests may hold of this instance's capacity.
    pub bounds: Bounds,
}

impl FromRef<AppState> for Arc<JwtKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.jwt_keys.clone()
    }
}
