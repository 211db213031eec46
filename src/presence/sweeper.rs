//! Background work every instance runs: sweeping expired leases and
//! reconciling sessions between Redis and Postgres. Both are safe to run on
//! any number of instances at once.

use std::time::Duration;

use uuid::Uuid;

use super::{connections, occupancy, sessions, teardown};
use crate::cache::scripts;
use crate::db;
use crate::error::Error;
use crate::events::{self, SYSTEM_ACTOR};
use crate::state::AppState;

/// Connections claimed per sweep round.
const SWEEP_BATCH: usize = 100;
/// A claimed connection whose sweeper died is retried after this long.
const CLAIM_RETRY: Duration = Duration::from_secs(5);
/// The reconciler leaves sessions younger than this to their starter.
const START_GRACE: Duration = Duration::from_secs(5);

/// Runs the sweeper and the reconciler until the instance stops.
pub fn spawn(state: AppState) {
    let sweeper = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(sweeper.settings.presence.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = sweeper.lifecycle.stopped() => break,
                _ = tick.tick() => {}
            }
            if let Err(err) = sweep(&sweeper).await {
                tracing::warn!(error = %err, "lease sweep failed; retrying next round");
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(state.settings.presence.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = state.lifecycle.stopped() => break,
                _ = tick.tick() => {}
            }
            if let Err(err) = reconcile(&state).await {
                tracing::warn!(error = %err, "session reconciliation failed; retrying next round");
            }
        }
    });
}

/// Ends every connection whose lease ran out: claims a batch (re-scoring each
/// deadline, so a crash mid-way only delays it) and ends each claimed one.
/// Returns how many ended.
pub async fn sweep(state: &AppState) -> Result<usize, Error> {
    let mut ended = 0;
    loop {
        let mut redis = state.redis.clone();
        let claimed: Vec<String> = scripts::CLAIM_EXPIRED
            .key(state.redis_keys.deadlines())
            .arg(SWEEP_BATCH)
            .arg(CLAIM_RETRY.as_millis() as u64)
            .invoke_async(&mut redis)
            .await?;
        for id in &claimed {
            // One that cannot end now stays claimed and is retried after
            // CLAIM_RETRY; it must not hold up the rest of the batch.
            match connections::end(state, id, false, "expired", SYSTEM_ACTOR).await {
                Ok(true) => ended += 1,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %err, connection_id = id, "could not end an expired connection; retrying later");
                }
            }
        }
        if claimed.len() < SWEEP_BATCH {
            return Ok(ended);
        }
    }
}

/// Repairs what a crash between Redis and Postgres leaves behind:
/// - an open session in Postgres that Redis no longer has (the last leave's
///   instance died, or Redis restarted empty) is ended;
/// - a session Redis has but Postgres never recorded (its starter died) is
///   recorded, and one Postgres has ended has its members evicted.
///
/// A room that cannot be repaired is logged and skipped, so it never holds
/// up the others; an error is returned only when a whole step could not run.
pub async fn reconcile(state: &AppState) -> Result<(), Error> {
    let mut failed = None;
    match db::sessions::all_active(&state.db).await {
        Ok(open) => {
            for (session_id, room) in open {
                if let Err(err) = end_if_gone(state, &room, session_id).await {
                    tracing::warn!(error = %err, room_id = room, "could not reconcile the room's open session; skipping it");
                }
            }
        }
        Err(err) => failed = Some(Error::from(err)),
    }
    let mut redis = state.redis.clone();
    let rooms: Result<Vec<(String, i64)>, _> = redis::cmd("ZRANGE")
        .arg(state.redis_keys.active_sessions())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut redis)
        .await;
    match rooms {
        Ok(rooms) => {
            for (room, indexed_at) in rooms {
                if let Err(err) = repair_redis_session(state, &room, indexed_at).await {
                    tracing::warn!(error = %err, room_id = room, "could not reconcile the room's Redis session; skipping it");
                }
            }
        }
        Err(err) => failed = Some(err.into()),
    }
    failed.map_or(Ok(()), Err)
}

/// Ends `session_id` in Postgres unless Redis still names it the room's.
async fn end_if_gone(state: &AppState, room: &str, session_id: Uuid) -> Result<(), Error> {
    if sessions::in_redis(state, room).await?.id != Some(session_id) {
        // Decided again under the room's lock: whatever Redis names then stays.
        let events = sessions::end_unnamed(state, room, SYSTEM_ACTOR).await?;
        events::publish(state, &events).await;
    }
    Ok(())
}

/// Repairs the session Redis holds for `room` (indexed at `indexed_at`):
/// - Postgres never recorded it (its starter died): it is recorded;
/// - Postgres has ended it (a delete whose instance died before it evicted
///   a racing join): the durable record stands, and its members are evicted;
/// - Redis holds none: the room leaves the index.
async fn repair_redis_session(state: &AppState, room: &str, indexed_at: i64) -> Result<(), Error> {
    let current = sessions::in_redis(state, room).await?;
    let Some(session_id) = current.id else {
        return occupancy::unindex_session(state, room, indexed_at).await;
    };
    // A start younger than this is most likely still on its way to
    // Postgres; recording it here would race its own events. Its age is
    // on Redis' clock, the one that stamped it.
    if current.age_ms < START_GRACE.as_millis() as i64 {
        return Ok(());
    }
    let Ok(room_id) = crate::ids::RoomId::parse(room) else {
        return Ok(());
    };
    match db::sessions::get(&state.db, session_id).await? {
        None => {
            let recorded = sessions::start(
                state,
                &room_id,
                session_id,
                connections::millis(current.started_at),
                current.occupancy,
                SYSTEM_ACTOR,
            )
            .await?;
            events::publish(state, &recorded.events).await;
        }
        Some(row) if row.ended_at.is_some() => {
            tracing::info!(room_id = room, %session_id, "evicting the members of a session Postgres has ended");
            teardown::evict_all(state, room, SYSTEM_ACTOR).await?;
        }
        Some(_) => {}
    }
    Ok(())
}
