//! The transitions that end a room's presence all at once: `clear` (every
//! occupant out, the metadata stays) and `DELETE` (everyone out, then the
//! room goes). Each ends only the sessions it decided to end: a join that
//! lands while a clear runs keeps the session it started; a join while a
//! delete runs is refused (404), as if it came after.

use serde_json::json;

use super::occupancy::{self, Remover};
use super::sessions;
use crate::cache::scripts;
use crate::db::rooms::RoomRow;
use crate::db::{self, outbox};
use crate::error::Error;
use crate::events::{self, Event, EventKind};
use crate::ids::RoomId;
use crate::state::AppState;

/// Evicts every occupant (`presence.left`, reason `evicted`) and ends the
/// session, including one Postgres still holds open that Redis no longer
/// names. A join that lands meanwhile stays, with the session it started.
pub async fn evict_all(state: &AppState, room: &str, actor: &str) -> Result<(), Error> {
    let mut redis = state.redis.clone();
    let members: Vec<String> = redis::cmd("HKEYS")
        .arg(state.redis_keys.room_members(room))
        .query_async(&mut redis)
        .await?;
    for id in members {
        occupancy::leave(state, room, &id, Remover::Allowed("evicted"), actor).await?;
    }
    let stale = sessions::end_unnamed(state, room, actor).await?;
    events::publish(state, &stale).await;
    Ok(())
}

/// Clears a room: everyone out, the session ended, then `room.cleared`.
pub async fn clear(state: &AppState, room: &str, actor: &str) -> Result<(), Error> {
    evict_all(state, room, actor).await?;
    events::publish(
        state,
        &[Event::new(EventKind::RoomCleared, room, actor, json!({}))],
    )
    .await;
    Ok(())
}

/// Deletes a room: joins are fenced off (so every `presence.left` comes
/// before the `session.ended` and `room.deleted`), everyone out, every open
/// session ended, the room tombstoned and `room.deleted` recorded, in one
/// transaction under the room's lock. `check` decides from the locked
/// room's version whether the delete may go on (`If-Match`).
pub async fn delete(
    state: &AppState,
    room: &RoomId,
    actor: &str,
    check: impl Fn(i64) -> Result<(), Error>,
) -> Result<(), Error> {
    let fence = |delta: i64| {
        let mut redis = state.redis.clone();
        // Expiring, so a delete that dies midway fences nothing for long.
        let ttl = (2 * state.settings.request_timeout.as_millis() as u64).max(1000);
        async move {
            scripts::FENCE_ROOM
                .key(state.redis_keys.room_closing(room.as_str()))
                .arg(delta)
                .arg(ttl)
                .invoke_async::<i64>(&mut redis)
                .await
        }
    };
    fence(1).await?;
    let deleted = delete_fenced(state, room, actor, check).await;
    if let Err(err) = fence(-1).await {
        tracing::warn!(error = %err, room_id = room.as_str(), "delete fence not lifted; it expires");
    }
    deleted
}

async fn delete_fenced(
    state: &AppState,
    room: &RoomId,
    actor: &str,
    check: impl Fn(i64) -> Result<(), Error>,
) -> Result<(), Error> {
    let id = room.as_str();
    evict_all(state, id, actor).await?;

    let mut tx = db::begin(&state.db).await?;
    let row = db::rooms::lock(&mut tx, id)
        .await?
        .filter(RoomRow::is_live)
        .ok_or_else(|| Error::not_found("room-not-found", format!("room {room} does not exist")))?;
    check(row.version)?;
    let mut durable = sessions::end_all(&mut tx, id, actor).await?;
    db::rooms::tombstone(&mut tx, id).await?;
    let mut deleted = Event::new(EventKind::RoomDeleted, id, actor, json!({}));
    outbox::record(&mut tx, &mut deleted).await?;
    durable.push(deleted);
    tx.commit().await?;
    events::publish(state, &durable).await;

    // A join the fence missed (it expired) is in a room that is gone, with
    // a session that has ended: out it goes too. Should this instance die
    // first, the reconciler evicts it (its session ended in Postgres).
    if occupancy::occupancy(state, id).await? > 0 {
        evict_all(state, id, actor).await?;
    }
    Ok(())
}
