//! The durable side of the session lifecycle. Redis has already decided the
//! transition; these record it in Postgres idempotently, with their events
//! in the outbox, under the room's row lock (one transition at a time).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::db::sessions::SessionRow;
use crate::db::{outbox, rooms, sessions};
use crate::error::Error;
use crate::events::Event;
use crate::ids::RoomId;
use crate::state::AppState;

/// Records a session Redis started: creates the room if needed (and
/// allowed), closes any stale open session, inserts the new one. Returns the
/// events, in order, for the caller to publish.
pub async fn start(
    state: &AppState,
    room: &RoomId,
    session_id: Uuid,
    started_at: DateTime<Utc>,
    occupancy: i64,
    actor: &str,
) -> Result<Vec<Event>, Error> {
    let mut tx = crate::db::begin(&state.db).await?;
    let create = state.settings.presence.auto_create_rooms;
    rooms::lock_for_session(&mut tx, room.as_str(), create)
        .await?
        .ok_or_else(|| Error::not_found("room-not-found", format!("room {room} does not exist")))?;
    let mut events: Vec<Event> = sessions::end_others(&mut tx, room.as_str(), Some(session_id))
        .await?
        .iter()
        .map(|row| ended_event(row, actor))
        .collect();
    if sessions::insert(&mut tx, session_id, room.as_str(), started_at).await? {
        events.push(Event::new(
            "session.started",
            room.as_str(),
            actor,
            json!({"session_id": session_id, "occupancy": occupancy}),
        ));
    }
    for event in &mut events {
        outbox::record(&mut tx, event).await?;
    }
    tx.commit().await?;
    Ok(events)
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

/// Ends whatever session of `room` Postgres still holds open.
pub async fn end_open(state: &AppState, room: &str, actor: &str) -> Result<Vec<Event>, Error> {
    let mut tx = crate::db::begin(&state.db).await?;
    rooms::lock(&mut tx, room).await?;
    let ended = sessions::end_others(&mut tx, room, None).await?;
    let events = record_ended(&mut tx, &ended, actor).await?;
    tx.commit().await?;
    Ok(events)
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
pub fn ended_event(row: &SessionRow, actor: &str) -> Event {
    Event::new(
        "session.ended",
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
