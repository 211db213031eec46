//! Redis: the shared connection manager for ephemeral state.

use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;

use crate::config::Settings;

/// Connects lazily, so the service starts (and serves room metadata from
/// Postgres) while Redis is down. Retries and timeouts are short: with Redis
/// unreachable a request fails in well under a second with a 503 instead of
/// the client's default multi-second backoff.
pub fn connect(settings: &Settings) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(settings.redis_url.expose_secret())
        .context("REDIS_URL is not a valid redis:// URL")?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(200))
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    ConnectionManager::new_lazy_with_config(client, config).context("REDIS_URL")
}

pub mod keys;
pub mod scripts;

pub use keys::Keys;
