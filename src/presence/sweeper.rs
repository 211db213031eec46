//! Background work every instance runs: sweeping expired leases and
//! reconciling sessions between Redis and Postgres. Both are safe to run on
//! any number of instances at once.

use std::time::Duration;

use uuid::Uuid;

use super::{connections, sessions};
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
            if connections::end(state, id, false, "expired", SYSTEM_ACTOR).await? {
                ended += 1;
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
///   recorded.
///
/// Also prunes outbox rows past the event retention.
pub async fn reconcile(state: &AppState) -> Result<(), Error> {
    let keys = &state.redis_keys;
    let mut redis = state.redis.clone();

    for (session_id, room) in db::sessions::all_active(&state.db).await? {
        let current: Option<String> = redis::cmd("HGET")
            .arg(keys.room_session(&room))
            .arg("id")
            .query_async(&mut redis)
            .await?;
        if current.as_deref() != Some(session_id.to_string().as_str()) {
            // Re-check under the room lock inside `end`: it is idempotent.
            let events = sessions::end(state, &room, session_id, 0, SYSTEM_ACTOR).await?;
            events::publish(state, &events).await;
        }
    }

    let rooms: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.active_sessions())
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await?;
    for room in rooms {
        let (id, started_at, occupancy): (Option<String>, Option<i64>, i64) = redis::pipe()
            .hget(keys.room_session(&room), "id")
            .hget(keys.room_session(&room), "started_at")
            .hlen(keys.room_members(&room))
            .query_async(&mut redis)
            .await?;
        let (Some(id), Some(started_at)) = (id, started_at) else {
            redis::cmd("ZREM")
                .arg(keys.active_sessions())
                .arg(&room)
                .query_async::<()>(&mut redis)
                .await?;
            continue;
        };
        // A start younger than this is most likely still on its way to
        // Postgres; recording it here would race its own events.
        if chrono::Utc::now().timestamp_millis() - started_at < START_GRACE.as_millis() as i64 {
            continue;
        }
        let Ok(session_id) = Uuid::try_parse(&id) else {
            continue;
        };
        if db::sessions::get(&state.db, session_id).await?.is_none() {
            let Ok(room_id) = crate::ids::RoomId::parse(&room) else {
                continue;
            };
            let events = sessions::start(
                state,
                &room_id,
                session_id,
                connections::millis(started_at),
                occupancy,
                SYSTEM_ACTOR,
            )
            .await?;
            events::publish(state, &events).await;
        }
    }

    let mut conn = state.db.acquire().await?;
    let retention = state.settings.presence.event_retention.as_secs() as i64;
    db::outbox::prune(&mut conn, retention).await?;
    Ok(())
}
