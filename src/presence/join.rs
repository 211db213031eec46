//! Joining a room: ATTACH on the connection's keys (which also loads the
//! connection for the permission check), then JOIN on the room's. The first
//! join into an empty room starts the session; it puts the room in the
//! reconciler's index before the JOIN that starts it, and records the
//! session in Postgres before it answers.

use std::collections::HashMap;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::connections::{Connection, millis, not_found};
use super::occupancy::{index_session, undo_join, unindex_session};
use super::sessions;
use crate::cache::{Keys, scripts};
use crate::error::Error;
use crate::events::{self, Event, EventKind};
use crate::ids::RoomId;
use crate::state::AppState;

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
    let (attached, fields, rooms, stamp): (
        i64,
        HashMap<String, String>,
        HashMap<String, i64>,
        i64,
    ) = scripts::ATTACH
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
    let joined_event = Event::new(
        EventKind::PresenceJoined,
        room.as_str(),
        actor,
        json!({"connection_id": conn.id, "owner": conn.owner}),
    );
    let candidate = Uuid::now_v7();
    let run = |indexed: bool| JoinScript {
        room: room.as_str(),
        conn: &conn,
        candidate,
        payload: joined_event.open_payload(),
        stamp,
        indexed,
    };
    let mut preindexed = false;
    let mut outcome = run(false).invoke(state).await?;
    if outcome.status == -2 {
        // A start: the room enters the reconciler's index first, so a crash
        // before Postgres records the session leaves a room it visits. An
        // entry already there (a session that started in between) stays.
        preindexed = index_session(state, room.as_str(), stamp, true).await?;
        outcome = run(true).invoke(state).await?;
    }
    let JoinOutcome {
        status,
        occupancy,
        session_id,
        started,
        joined_at,
        session_started_at,
        durable,
    } = outcome;
    if status == -1 {
        // It ended after ATTACH, and its leave of this room came first.
        if preindexed {
            unindex_session(state, room.as_str(), stamp).await?;
        }
        return Err(not_found(&conn.id));
    }
    if status == -3 {
        // A delete is evicting everyone: this join comes after it.
        undo_join(state, room.as_str(), &conn.id, stamp).await;
        if preindexed {
            unindex_session(state, room.as_str(), stamp).await?;
        }
        return Err(Error::not_found(
            "room-not-found",
            format!("room {room} is being deleted"),
        ));
    }

    // The entry the session's end takes out names the session's start: set
    // by the starter, or by a join whose entry a racing starter's session
    // took over. If this fails, the entry from before stays for the
    // reconciler.
    if started == 1 || preindexed {
        let indexed = index_session(state, room.as_str(), session_started_at, false).await;
        if let Err(err) = indexed {
            tracing::warn!(error = %err, room_id = room.as_str(), "session not indexed by its start; the reconciler will see it");
        }
    }
    // The starter records its session; a joiner of a session its starter
    // has not yet marked durable records it too (a no-op if it is there,
    // fenced like the starter's), so a 201 naming it never comes before a
    // GET can find it.
    let to_record = match Uuid::try_parse(&session_id) {
        Ok(id) if started == 1 => Some((id, joined_at)),
        Ok(id) if durable == 0 => Some((id, session_started_at)),
        _ => None,
    };
    if let Some((id, started_at)) = to_record {
        match sessions::start(state, room, id, millis(started_at), occupancy, actor).await {
            // Appending its `session.started` also appends the
            // `presence.joined` of every join that waited for it.
            Ok(recorded) => events::publish(state, &recorded.events).await,
            Err(err) => {
                // Undo quietly what this join added: nobody was told of it.
                if status == 1 {
                    undo_join(state, room.as_str(), &conn.id, stamp).await;
                }
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

/// One run of the JOIN script for `conn` in `room`.
struct JoinScript<'a> {
    room: &'a str,
    conn: &'a Connection,
    candidate: Uuid,
    payload: String,
    stamp: i64,
    /// Whether the room is in the reconciler's index; without it a join
    /// that would start a session changes nothing and answers -2.
    indexed: bool,
}

/// What the JOIN script answered (see its comment).
struct JoinOutcome {
    status: i64,
    occupancy: i64,
    session_id: String,
    started: i64,
    joined_at: i64,
    session_started_at: i64,
    durable: i64,
}

impl JoinScript<'_> {
    async fn invoke(&self, state: &AppState) -> Result<JoinOutcome, Error> {
        let keys = &state.redis_keys;
        let room = self.room;
        let mut redis = state.redis.clone();
        let (status, occupancy, session_id, started, joined_at, session_started_at, durable) =
            scripts::JOIN
                .key(keys.room_members(room))
                .key(keys.room_session(room))
                .key(keys.room_events(room))
                .key(keys.room_profiles(room))
                .key(keys.room_departed(room))
                .key(keys.room_occupants(room))
                .key(keys.room_pending_joins(room))
                .key(keys.room_closing(room))
                .arg(&self.conn.id)
                .arg(self.candidate.to_string())
                .arg(&self.payload)
                .arg(serde_json::to_string(&self.conn.owner).map_err(anyhow::Error::from)?)
                .arg(self.conn.metadata.to_string())
                .arg(self.conn.version)
                .arg(state.settings.presence.event_history)
                .arg(keys.events_channel())
                .arg(room)
                .arg(self.stamp)
                .arg(if self.indexed { "1" } else { "0" })
                .arg(state.settings.presence.retention_ms())
                .invoke_async(&mut redis)
                .await?;
        Ok(JoinOutcome {
            status,
            occupancy,
            session_id,
            started,
            joined_at,
            session_started_at,
            durable,
        })
    }
}
