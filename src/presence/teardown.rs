//! The transitions that end a room's presence all at once: `clear` (every
//! occupant out, the metadata stays) and `DELETE` (everyone out, then the
//! room goes). Each ends only the sessions it decided to end: a join that
//! lands while it runs keeps the session it started after a clear, and is
//! evicted again after a delete.

use serde_json::json;

use super::occupancy::{self, Remover};
use super::sessions;
use crate::db::rooms::RoomRow;
use crate::db::{self, outbox};
use crate::error::Error;
use crate::events::{self, Event};
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
    events::publish(state, &[Event::new("room.cleared", room, actor, json!({}))]).await;
    Ok(())
}

/// Deletes a room: everyone out, every open session ended (the one a racing
/// join started too: the room goes), the room tombstoned and `room.deleted`
/// recorded, in one transaction under the room's lock; then whoever joined
/// meanwhile is evicted as well. `check` decides from the locked room's
/// version whether the delete may go on (`If-Match`).
pub async fn delete(
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
    let mut deleted = Event::new("room.deleted", id, actor, json!({}));
    outbox::record(&mut tx, &mut deleted).await?;
    durable.push(deleted);
    tx.commit().await?;
    events::publish(state, &durable).await;

    // A join between the eviction and the lock is in a room that is gone,
    // with a session that has ended: out it goes too. Should this instance
    // die first, the reconciler evicts it (its session ended in Postgres).
    if occupancy::occupancy(state, id).await? > 0 {
        evict_all(state, id, actor).await?;
    }
    Ok(())
}
