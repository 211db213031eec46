//! Occupancy: which connections are in which room. The first join into an
//! empty room starts a session and the last leave ends it, decided by one Lua
//! script per transition on the room's keys.
//!
//! A join is two Redis round trips when it starts no session: ATTACH on the
//! connection's keys (which also loads the connection for the permission
//! check), then JOIN on the room's.

use std::cmp::max;
use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::connections::{Connection, millis, not_found};
use super::sessions;
use crate::cache::{Keys, scripts};
use crate::error::Error;
use crate::events::{self, Event};
use crate::ids::RoomId;
use crate::state::AppState;

/// A room remembers a departed connection at least this long: any join of
/// it still in flight (its request runs within the request timeout) has
/// reached Redis long before.
const DEPARTED_RETENTION: Duration = Duration::from_secs(600);

/// The result of a join.
#[derive(Debug, Clone)]
pub struct Joined {
    /// False when the connection was already in the room.
    pub newly: bool,
    pub occupancy: i64,
    pub session_id: String,
    pub joined_at: DateTime<Utc>,
}

/// Joins connection `id` to `room` for a caller that must own it (`owner`;
/// `None` for an admin, who owns every connection). `authorize` decides from
/// the connection as loaded (`None`: it does not exist) whether the caller
/// may join it, as for any request on a connection; the connection was only
/// attached if `owner` owns it. Returns once a session it started is durable.
pub async fn join(
    state: &AppState,
    room: &RoomId,
    id: &str,
    owner: Option<&str>,
    authorize: impl FnOnce(Option<Connection>) -> Result<Connection, Error>,
    actor: &str,
) -> Result<(Connection, Joined), Error> {
    let keys = &state.redis_keys;
    let presence = &state.settings.presence;
    let mut redis = state.redis.clone();
    let (attached, fields, rooms): (i64, HashMap<String, String>, HashMap<String, i64>) =
        scripts::ATTACH
            .key(keys.connection(id))
            .key(keys.connection_rooms(id))
            .key(keys.connection_events(id))
            .arg(room.as_str())
            .arg(presence.max_rooms_per_connection)
            .arg(keys.events_channel())
            .arg(Keys::connection_topic(id))
            .arg(if owner.is_some() { "1" } else { "0" })
            .arg(owner.unwrap_or_default())
            .invoke_async(&mut redis)
            .await?;
    let conn = authorize(Connection::from_redis(id, fields, rooms))?;
    match attached {
        0 | 1 => {}
        -1 => return Err(not_found(id)),
        -2 => {
            return Err(Error::client(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-rooms",
                format!(
                    "a connection may be in at most {} rooms",
                    presence.max_rooms_per_connection
                ),
            ));
        }
        // -3, not the caller's: what `authorize` has just refused.
        other => return Err(anyhow::anyhow!("unexpected ATTACH answer {other}").into()),
    }
    let mut joined_event = Event::new(
        "presence.joined",
        room.as_str(),
        actor,
        json!({"connection_id": conn.id, "owner": conn.owner, "metadata": conn.metadata}),
    );
    let candidate = Uuid::now_v7();
    let (status, occupancy, session_id, started, joined_at): (i64, i64, String, i64, i64) =
        scripts::JOIN
            .key(keys.room_members(room.as_str()))
            .key(keys.room_session(room.as_str()))
            .key(keys.room_events(room.as_str()))
            .key(keys.room_departed(room.as_str()))
            .arg(&conn.id)
            .arg(candidate.to_string())
            .arg(joined_event.open_payload())
            .arg(presence.event_history)
            .arg(keys.events_channel())
            .arg(room.as_str())
            .invoke_async(&mut redis)
            .await?;
    if status == -1 {
        // It ended after ATTACH, and its leave of this room came first.
        return Err(not_found(&conn.id));
    }

    if started == 1 {
        redis::cmd("ZADD")
            .arg(keys.active_sessions())
            .arg(joined_at)
            .arg(room.as_str())
            .query_async::<()>(&mut redis)
            .await?;
        let session_id = candidate;
        match sessions::start(state, room, session_id, millis(joined_at), occupancy, actor).await {
            Ok(mut durable) => {
                joined_event.data["occupancy"] = occupancy.into();
                durable.push(joined_event);
                events::publish(state, &durable).await;
            }
            Err(err) => {
                // Undo quietly: nobody was told about this join.
                undo_join(state, room.as_str(), &conn.id).await;
                return Err(err);
            }
        }
    }
    let joined = Joined {
        newly: status == 1,
        occupancy,
        session_id,
        joined_at: millis(joined_at),
    };
    Ok((conn, joined))
}

async fn undo_join(state: &AppState, room: &str, connection_id: &str) {
    let undone = async {
        let outcome =
            leave_script(state, room, connection_id, "", Remover::Allowed("left")).await?;
        detach(state, room, connection_id).await?;
        if outcome.ended.is_some() {
            let mut redis = state.redis.clone();
            redis::cmd("ZREM")
                .arg(state.redis_keys.active_sessions())
                .arg(room)
                .query_async::<()>(&mut redis)
                .await?;
        }
        Ok::<_, Error>(())
    };
    if let Err(err) = undone.await {
        tracing::warn!(error = %err, room, connection_id, "could not undo a failed join; the sweeper will");
    }
}

/// Who removes a connection from a room, with the `reason` of its
/// `presence.left`.
#[derive(Debug, Clone, Copy)]
pub enum Remover {
    /// One allowed to remove it.
    Allowed(&'static str),
    /// The connection itself is ending: a join of it still on its way into
    /// the room is refused from now on.
    Ending(&'static str),
}

struct LeaveOutcome {
    left: bool,
    /// The session this leave ended, with its peak occupancy.
    ended: Option<(String, i64)>,
}

async fn leave_script(
    state: &AppState,
    room: &str,
    connection_id: &str,
    payload: &str,
    remover: Remover,
) -> Result<LeaveOutcome, Error> {
    let keys = &state.redis_keys;
    let departed_ms = match remover {
        Remover::Allowed(_) => None,
        Remover::Ending(_) => {
            Some(max(DEPARTED_RETENTION, 2 * state.settings.request_timeout).as_millis())
        }
    };
    let mut redis = state.redis.clone();
    let reply: Vec<redis::Value> = scripts::LEAVE
        .key(keys.room_members(room))
        .key(keys.room_session(room))
        .key(keys.room_events(room))
        .key(keys.room_departed(room))
        .arg(connection_id)
        .arg(payload)
        .arg(departed_ms.map(|ms| ms.to_string()).unwrap_or_default())
        .arg(state.settings.presence.event_history)
        .arg(keys.events_channel())
        .arg(room)
        .invoke_async(&mut redis)
        .await?;
    let left = matches!(reply.first(), Some(redis::Value::Int(1)));
    let ended = match (reply.get(2), reply.get(3)) {
        (Some(id), Some(redis::Value::Int(peak))) => redis::from_redis_value_ref::<String>(id)
            .ok()
            .map(|id| (id, *peak)),
        _ => None,
    };
    Ok(LeaveOutcome { left, ended })
}

async fn detach(state: &AppState, room: &str, connection_id: &str) -> Result<(), Error> {
    let keys = &state.redis_keys;
    let mut redis = state.redis.clone();
    scripts::DETACH
        .key(keys.connection_rooms(connection_id))
        .key(keys.connection_events(connection_id))
        .arg(room)
        .arg(keys.events_channel())
        .arg(Keys::connection_topic(connection_id))
        .invoke_async::<()>(&mut redis)
        .await?;
    Ok(())
}

/// Removes a connection from a room, recording `presence.left` with
/// `reason`; the last one out ends the session durably before this returns.
/// Returns false when the connection was not in the room.
pub async fn leave(
    state: &AppState,
    room: &str,
    connection_id: &str,
    owner: &str,
    metadata: &Value,
    remover: Remover,
    actor: &str,
) -> Result<bool, Error> {
    let (Remover::Allowed(reason) | Remover::Ending(reason)) = remover;
    let left_event = Event::new(
        "presence.left",
        room,
        actor,
        json!({"connection_id": connection_id, "owner": owner, "metadata": metadata, "reason": reason}),
    );
    let outcome = leave_script(
        state,
        room,
        connection_id,
        &left_event.open_payload(),
        remover,
    )
    .await?;
    let ended = match outcome.ended {
        Some((session_id, peak)) => end_session(state, room, &session_id, peak, actor).await,
        None => Ok(()),
    };
    // Detached last, so the connection's own stream, which stops following
    // the room here, has seen the session end its leave caused.
    detach(state, room, connection_id).await?;
    ended?;
    Ok(outcome.left)
}

async fn end_session(
    state: &AppState,
    room: &str,
    session_id: &str,
    peak: i64,
    actor: &str,
) -> Result<(), Error> {
    let id = Uuid::try_parse(session_id)
        .map_err(|_| anyhow::anyhow!("malformed session id {session_id:?} in Redis"))?;
    let durable = sessions::end(state, room, id, peak, actor).await?;
    events::publish(state, &durable).await;
    let mut redis = state.redis.clone();
    redis::cmd("ZREM")
        .arg(state.redis_keys.active_sessions())
        .arg(room)
        .query_async::<()>(&mut redis)
        .await?;
    Ok(())
}

/// Evicts every occupant (`presence.left`, reason `evicted`) and ends the
/// session, including one Postgres still holds open with nobody in Redis.
pub async fn evict_all(state: &AppState, room: &str, actor: &str) -> Result<(), Error> {
    let keys = &state.redis_keys;
    let mut redis = state.redis.clone();
    let members: Vec<String> = redis::cmd("HKEYS")
        .arg(keys.room_members(room))
        .query_async(&mut redis)
        .await?;
    for id in members {
        let (owner, metadata): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys.connection(&id))
            .arg("owner")
            .arg("metadata")
            .query_async(&mut redis)
            .await?;
        let metadata = metadata
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        leave(
            state,
            room,
            &id,
            &owner.unwrap_or_default(),
            &metadata,
            Remover::Allowed("evicted"),
            actor,
        )
        .await?;
    }
    let stale = sessions::end_open(state, room, actor).await?;
    events::publish(state, &stale).await;
    Ok(())
}

/// One occupant of a room.
#[derive(Debug, Clone)]
pub struct Occupant {
    pub connection: Connection,
    pub joined_at: DateTime<Utc>,
}

/// The room's occupants in id order, with their connections.
pub async fn occupants(state: &AppState, room: &str) -> Result<Vec<Occupant>, Error> {
    let mut redis = state.redis.clone();
    let members: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(state.redis_keys.room_members(room))
        .query_async(&mut redis)
        .await?;
    let mut occupants = Vec::with_capacity(members.len());
    for (id, joined_at) in members {
        if let Some(connection) = super::connections::load(state, &id).await? {
            occupants.push(Occupant {
                connection,
                joined_at: millis(joined_at),
            });
        }
    }
    occupants.sort_by(|a, b| a.connection.id.cmp(&b.connection.id));
    Ok(occupants)
}

/// How many connections are in the room.
pub async fn occupancy(state: &AppState, room: &str) -> Result<u64, Error> {
    let mut redis = state.redis.clone();
    Ok(redis::cmd("HLEN")
        .arg(state.redis_keys.room_members(room))
        .query_async(&mut redis)
        .await?)
}
