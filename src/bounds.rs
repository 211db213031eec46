//! Per-instance bounds on what one client's requests may hold of shared
//! capacity, so that no client input can slow down or stop others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
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
    /// Open event streams per token subject. Per instance: a client can
    /// hold this many on each instance it reaches; a count in Redis would
    /// be left wrong by every instance that dies with streams open.
    streams: Arc<Mutex<HashMap<String, usize>>>,
    max_streams_per_subject: usize,
}

/// One open stream of a subject, counted until dropped.
pub struct StreamSlot {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    subject: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = streams.get_mut(&self.subject) {
            *open -= 1;
            if *open == 0 {
                streams.remove(&self.subject);
            }
        }
    }
}

impl Bounds {
    pub fn new(settings: &Settings) -> Self {
        Self {
            filters: Arc::new(Semaphore::new(filter_slots(settings.db_max_connections))),
            streams: Arc::default(),
            max_streams_per_subject: settings.max_streams_per_subject,
        }
    }

    /// A slot for one more event stream of `subject`, or 429
    /// `too-many-streams`.
    pub fn stream_slot(&self, subject: &str) -> Result<StreamSlot, Error> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let open = streams.entry(subject.to_owned()).or_default();
        if *open >= self.max_streams_per_subject {
            return Err(Error::busy(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-streams",
                format!(
                    "a token subject may hold at most {} event streams open on this instance; close one first",
                    self.max_streams_per_subject
                ),
                1,
            ));
        }
        *open += 1;
        Ok(StreamSlot {
            streams: self.streams.clone(),
            subject: subject.to_owned(),
        })
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
