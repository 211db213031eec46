//! The durable side of the session lifecycle. Redis decides each transition
//! (the first join starts a session, the last leave ends it); these record
//! it in Postgres with their events in the outbox, under the room's row lock
//! (one transition at a time).
//!
//! Every transition names the session it is about, and a Postgres
//! transition that depends on which session is the room's reads Redis
//! *under that lock*: a start whose session Redis no longer names, or an
//! "end what is stale" racing a join that started a newer one, can then
//! never close the wrong session. Session ids are fresh UUIDs, never
//! reused, so an id is its own generation.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::cache::scripts;
use crate::db::sessions::SessionRow;
use crate::db::{outbox, rooms, sessions};
use crate::error::Error;
use crate::events::{Event, EventKind};
use crate::ids::RoomId;
use crate::state::AppState;

/// What Redis holds as the room's session now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSession {
    pub id: Option<Uuid>,
    pub started_at: i64,
    /// How long ago it started, on Redis' clock (the one `started_at` is on).
    pub age_ms: i64,
    pub occupancy: i64,
}

/// The room's session as Redis holds it, read in one script.
pub async fn in_redis(state: &AppState, room: &str) -> Result<RedisSession, Error> {
    let keys = &state.redis_keys;
    let mut redis = state.redis.clone();
    let (id, started_at, age_ms, occupancy): (String, i64, i64, i64) = scripts::ROOM_SESSION
        .key(keys.room_session(room))
        .key(keys.room_members(room))
        .invoke_async(&mut redis)
        .await?;
    Ok(RedisSession {
        // Anything but a UUID was not written by us: no session.
        id: Uuid::try_parse(&id).ok(),
        started_at,
        age_ms,
        occupancy,
    })
}

/// What a start recorded.
#[derive(Debug)]
pub struct Started {
    /// The events, in order, for the caller to publish.
    pub events: Vec<Event>,
    /// False when Redis had already ended the session (its room emptied
    /// before the start reached Postgres): it is in the history as ended,
    /// with no events, and nobody is in it.
    pub current: bool,
}

/// Records a session Redis started: creates the room if needed (and
/// allowed), closes any stale open session, inserts the new one. Idempotent
/// (a joiner, the starter and the reconciler may all record it).
///
/// Fenced: only while Redis still names `session_id` may it close other
/// sessions or open this one. Otherwise its end came first; it is recorded
/// as already ended so that the history holds every session a join was
/// told about.
pub async fn start(
    state: &AppState,
    room: &RoomId,
    session_id: Uuid,
    started_at: DateTime<Utc>,
    occupancy: i64,
    actor: &str,
) -> Result<Started, Error> {
    let mut tx = crate::db::begin(&state.db).await?;
    let create = state.settings.presence.auto_create_rooms;
    rooms::lock_for_session(&mut tx, room.as_str(), create)
        .await?
        .ok_or_else(|| Error::not_found("room-not-found", format!("room {room} does not exist")))?;
    let current = in_redis(state, room.as_str()).await?.id == Some(session_id);
    if !current {
        sessions::insert_ended(&mut tx, session_id, room.as_str(), started_at).await?;
        tx.commit().await?;
        return Ok(Started {
            events: Vec::new(),
            current,
        });
    }
    let mut events: Vec<Event> = sessions::end_others(&mut tx, room.as_str(), Some(session_id))
        .await?
        .iter()
        .map(|row| ended_event(row, actor))
        .collect();
    if sessions::insert(&mut tx, session_id, room.as_str(), started_at).await? {
        events.push(Event::new(
            EventKind::SessionStarted,
            room.as_str(),
            actor,
            json!({"session_id": session_id, "occupancy": occupancy}),
        ));
    }
    for event in &mut events {
        outbox::record(&mut tx, event).await?;
    }
    tx.commit().await?;
    mark_durable(state, room.as_str(), session_id).await;
    Ok(Started { events, current })
}

/// Tells later joiners that the session is in Postgres, so they need not
/// make sure of it themselves. Best effort: without the mark, a joiner
/// records it again, which is a no-op.
async fn mark_durable(state: &AppState, room: &str, session_id: Uuid) {
    let mut redis = state.redis.clone();
    let marked: redis::RedisResult<()> = scripts::MARK_SESSION_DURABLE
        .key(state.redis_keys.room_session(room))
        .arg(session_id.to_string())
        .invoke_async(&mut redis)
        .await;
    if let Err(err) = marked {
        tracing::debug!(error = %err, room, "session not marked durable in Redis");
    }
}

/// Records the end of a session Redis ended. Idempotent: a session already
/// ended (by a concurrent start or the reconciler) yields no event.
pub async fn end(
    state: &AppState,
    room: &str,
    session_id: Uuid,
    peak: i64,
    actor: &str,
) -> Result<Vec<Event>, Error> {
    let mut tx = crate::db::begin(&state.db).await?;
    rooms::lock(&mut tx, room).await?;
    let peak = i32::try_from(peak).unwrap_or(i32::MAX);
    let ended: Vec<SessionRow> = sessions::end(&mut tx, session_id, peak)
        .await?
        .into_iter()
        .collect();
    let events = record_ended(&mut tx, &ended, actor).await?;
    tx.commit().await?;
    Ok(events)
}

/// Ends every session of `room` Postgres holds open that Redis does not
/// name (its last leave's instance died, Redis lost it, or a clear evicted
/// everyone). The one Redis names, read under the room's lock, stays: a
/// join that started it after the caller's decision is not undone.
pub async fn end_unnamed(state: &AppState, room: &str, actor: &str) -> Result<Vec<Event>, Error> {
    let mut tx = crate::db::begin(&state.db).await?;
    rooms::lock(&mut tx, room).await?;
    let named = in_redis(state, room).await?.id;
    let ended = sessions::end_others(&mut tx, room, named).await?;
    let events = record_ended(&mut tx, &ended, actor).await?;
    tx.commit().await?;
    Ok(events)
}

/// Ends every session of `room` Postgres holds open, in `tx` (a delete's,
/// which holds the room's lock): the room goes, so does any session a join
/// raced into it. Returns their `session.ended`, recorded in the outbox.
pub async fn end_all(
    tx: &mut sqlx::PgConnection,
    room: &str,
    actor: &str,
) -> Result<Vec<Event>, Error> {
    let ended = sessions::end_others(tx, room, None).await?;
    record_ended(tx, &ended, actor).await
}

/// Records `session.ended` for each just-ended row in the outbox.
async fn record_ended(
    conn: &mut sqlx::PgConnection,
    ended: &[SessionRow],
    actor: &str,
) -> Result<Vec<Event>, Error> {
    let mut events: Vec<Event> = ended.iter().map(|row| ended_event(row, actor)).collect();
    for event in &mut events {
        outbox::record(conn, event).await?;
    }
    Ok(events)
}

/// `session.ended` for a row that was just ended.
fn ended_event(row: &SessionRow, actor: &str) -> Event {
    Event::new(
        EventKind::SessionEnded,
        &row.room,
        actor,
        json!({
            "session_id": row.id,
            "occupancy": 0,
            "ended_at": row.ended_at,
            "peak_occupancy": row.peak_occupancy,
            "final_metadata": row.final_metadata.as_ref().map_or(Value::Null, |m| m.0.clone()),
        }),
    )
}
