//! Per-instance bounds on what one client's requests may hold of shared
//! capacity, so that no client input can slow down or stop others.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Settings;
use crate::error::Error;

/// How long a filtered listing waits for a slot before answering 503.
const FILTER_SLOT_WAIT: Duration = Duration::from_secs(1);

/// The instance's shared bounds; cheap to clone.
#[derive(Clone)]
pub struct Bounds {
    /// Slots for listings with a `where` filter: each may hold a pooled
    /// Postgres connection for up to the filter timeout, so together they
    /// never take more than a quarter of the pool.
    filters: Arc<Semaphore>,
}

impl Bounds {
    pub fn new(settings: &Settings) -> Self {
        Self {
            filters: Arc::new(Semaphore::new(filter_slots(settings.db_max_connections))),
        }
    }

    /// A slot for one filtered listing, or 503 `filters-busy`.
    pub async fn filter_slot(&self) -> Result<OwnedSemaphorePermit, Error> {
        let acquire = self.filters.clone().acquire_owned();
        match tokio::time::timeout(FILTER_SLOT_WAIT, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::busy(
                StatusCode::SERVICE_UNAVAILABLE,
                "filters-busy",
                "too many listings with a where filter are running; retry shortly",
                1,
            )),
        }
    }
}

fn filter_slots(db_max_connections: u32) -> usize {
    (db_max_connections as usize / 4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_take_at_most_a_quarter_of_the_pool_but_always_one() {
        assert_eq!(filter_slots(1), 1);
        assert_eq!(filter_slots(8), 2);
        assert_eq!(filter_slots(16), 4);
    }
}
