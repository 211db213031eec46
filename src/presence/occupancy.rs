//! Occupancy: which connections are in which room, and leaving one. A join
//! (see `join`) and a leave each cost two Redis round trips when no session
//! starts or ends; the last leave ends the session, decided by one Lua
//! script on the room's keys.
//!
//! A leave is LEAVE on the room's keys (which judges the caller by the
//! occupant's profile there) then DETACH on the connection's. DETACH comes
//! last: the connection's own stream stops following the room at its
//! marker, so by then the room's stream must hold the `presence.left` and
//! any `session.ended` the leave caused.

use std::cmp::max;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::sessions;
use crate::cache::{Keys, scripts};
use crate::error::Error;
use crate::events::{self, Event, EventKind};
use crate::state::AppState;

/// A room remembers a departed connection at least this long: any join of
/// it still in flight (its request runs within the request timeout) has
/// reached Redis long before.
const DEPARTED_RETENTION: Duration = Duration::from_secs(600);

/// Who removes a connection from a room, which decides the `reason` of its
/// `presence.left`.
#[derive(Debug, Clone, Copy)]
pub enum Remover<'a> {
    /// A request's caller, judged by the LEAVE script from the occupant's
    /// profile: its owner leaves (`left`), anyone else evicts (`evicted`)
    /// only if it `moderates` the room (an admin does). Refused or not in
    /// the room, nothing changes.
    Caller { subject: &'a str, moderates: bool },
    /// One already allowed to remove it, with the reason.
    Allowed(&'static str),
    /// The connection itself is ending, with the reason: a join of it still
    /// on its way into the room is refused from now on.
    Ending(&'static str),
}

/// What a leave did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    Left,
    NotInRoom,
    /// Not the caller's to remove, or the occupant has no profile to judge
    /// by (it joined through an older version); nothing changed.
    Refused,
}

struct LeaveOutcome {
    /// -1 refused, 0 not a member, 1 left.
    status: i64,
    /// The attach the leave took out of the room, if its profile knew it.
    stamp: Option<i64>,
    /// The session this leave ended.
    ended: Option<EndedInRedis>,
}

/// A session the last leave ended in Redis.
struct EndedInRedis {
    id: String,
    peak: i64,
    started_at: i64,
}

/// Owner and metadata (JSON) of an occupant without a profile.
type Description = (String, String);

async fn leave_script(
    state: &AppState,
    room: &str,
    connection_id: &str,
    payload: &str,
    remover: Remover<'_>,
    described: Option<&Description>,
) -> Result<LeaveOutcome, Error> {
    let keys = &state.redis_keys;
    let (subject, reason, evict_reason, departed_ms) = match remover {
        Remover::Caller { subject, moderates } => (
            serde_json::to_string(subject).map_err(anyhow::Error::from)?,
            "left",
            if moderates { "evicted" } else { "" },
            None,
        ),
        Remover::Allowed(reason) => (String::new(), reason, "", None),
        Remover::Ending(reason) => (
            String::new(),
            reason,
            "",
            Some(max(DEPARTED_RETENTION, 2 * state.settings.request_timeout).as_millis()),
        ),
    };
    let (owner, metadata) = described.map_or(("", ""), |(o, m)| (o.as_str(), m.as_str()));
    let mut redis = state.redis.clone();
    let reply: Vec<redis::Value> = scripts::LEAVE
        .key(keys.room_members(room))
        .key(keys.room_session(room))
        .key(keys.room_events(room))
        .key(keys.room_profiles(room))
        .key(keys.room_departed(room))
        .key(keys.room_occupants(room))
        .key(keys.room_pending_joins(room))
        .arg(connection_id)
        .arg(payload)
        .arg(subject)
        .arg(reason)
        .arg(evict_reason)
        .arg(departed_ms.map(|ms| ms.to_string()).unwrap_or_default())
        .arg(owner)
        .arg(metadata)
        .arg(state.settings.presence.event_history)
        .arg(keys.events_channel())
        .arg(room)
        .arg(state.settings.presence.retention_ms())
        .invoke_async(&mut redis)
        .await?;
    let status = match reply.first() {
        Some(redis::Value::Int(status)) => *status,
        _ => return Err(anyhow::anyhow!("unexpected LEAVE answer {reply:?}").into()),
    };
    let stamp = reply
        .get(2)
        .and_then(|stamp| redis::from_redis_value_ref::<i64>(stamp).ok());
    let ended = match (reply.get(3), reply.get(4), reply.get(5)) {
        (Some(id), Some(redis::Value::Int(peak)), Some(redis::Value::Int(started_at))) => {
            redis::from_redis_value_ref::<String>(id)
                .ok()
                .map(|id| EndedInRedis {
                    id,
                    peak: *peak,
                    started_at: *started_at,
                })
        }
        _ => None,
    };
    Ok(LeaveOutcome {
        status,
        stamp,
        ended,
    })
}

/// Owner and metadata of a connection, from its own keys.
async fn describe(state: &AppState, connection_id: &str) -> Result<Description, Error> {
    let mut redis = state.redis.clone();
    let (owner, metadata): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(state.redis_keys.connection(connection_id))
        .arg("owner")
        .arg("metadata")
        .query_async(&mut redis)
        .await?;
    let owner = serde_json::to_string(&owner.unwrap_or_default()).map_err(anyhow::Error::from)?;
    Ok((owner, metadata.unwrap_or_else(|| "{}".to_owned())))
}

/// Takes `room` out of the connection's rooms: only the attach `stamp` if
/// given, else whichever attach is there.
async fn detach(
    state: &AppState,
    room: &str,
    connection_id: &str,
    stamp: Option<i64>,
) -> Result<(), Error> {
    let keys = &state.redis_keys;
    let mut redis = state.redis.clone();
    scripts::DETACH
        .key(keys.connection_rooms(connection_id))
        .key(keys.connection_events(connection_id))
        .arg(room)
        .arg(keys.events_channel())
        .arg(Keys::connection_topic(connection_id))
        .arg(stamp.map(|stamp| stamp.to_string()).unwrap_or_default())
        .invoke_async::<()>(&mut redis)
        .await?;
    Ok(())
}

/// Quietly takes out what a failed join added: nobody was told of it.
pub(super) async fn undo_join(state: &AppState, room: &str, connection_id: &str, stamp: i64) {
    let undone = async {
        let outcome = leave_script(
            state,
            room,
            connection_id,
            "",
            Remover::Allowed("left"),
            None,
        )
        .await?;
        detach(state, room, connection_id, Some(stamp)).await?;
        if let Some(ended) = &outcome.ended {
            unindex_session(state, room, ended.started_at).await?;
        }
        Ok::<_, Error>(())
    };
    if let Err(err) = undone.await {
        tracing::warn!(error = %err, room, connection_id, "could not undo a failed join; the sweeper will");
    }
}

/// Removes connection `id` from `room`, recording `presence.left` with its
/// owner and metadata from the room's profile of it; the last one out ends
/// the session durably before this returns.
pub async fn leave(
    state: &AppState,
    room: &str,
    id: &str,
    remover: Remover<'_>,
    actor: &str,
) -> Result<Leave, Error> {
    let left_event = Event::new(
        EventKind::PresenceLeft,
        room,
        actor,
        json!({"connection_id": id}),
    );
    let payload = left_event.open_payload();
    let caller = matches!(remover, Remover::Caller { .. });
    let mut outcome = leave_script(state, room, id, &payload, remover, None).await?;
    if outcome.status == -1 && !caller {
        // Only an occupant without a profile refuses one who is allowed.
        let described = describe(state, id).await?;
        outcome = leave_script(state, room, id, &payload, remover, Some(&described)).await?;
    }
    match outcome.status {
        -1 => return Ok(Leave::Refused),
        // Its caller is not authorized yet: nothing changes.
        0 if caller => return Ok(Leave::NotInRoom),
        _ => {}
    }
    let ended = match &outcome.ended {
        Some(ended) => end_session(state, room, ended, actor).await,
        None => Ok(()),
    };
    // Detached last, so the connection's own stream, which stops following
    // the room here, has seen the `presence.left` and the session end its
    // leave caused. A connection that is ending loses every attach; any
    // other leave only the one it took out of the room (a join may have
    // attached it again since, and its member must stay listed where the
    // sweeper looks).
    match (remover, outcome.status) {
        (Remover::Ending(_), _) => detach(state, room, id, None).await?,
        (_, 1) => detach(state, room, id, outcome.stamp).await?,
        _ => {}
    }
    ended?;
    Ok(if outcome.status == 1 {
        Leave::Left
    } else {
        Leave::NotInRoom
    })
}

async fn end_session(
    state: &AppState,
    room: &str,
    ended: &EndedInRedis,
    actor: &str,
) -> Result<(), Error> {
    let id = Uuid::try_parse(&ended.id)
        .map_err(|_| anyhow::anyhow!("malformed session id {:?} in Redis", ended.id))?;
    let durable = sessions::end(state, room, id, ended.peak, actor).await?;
    events::publish(state, &durable).await;
    unindex_session(state, room, ended.started_at).await
}

/// Puts the room in the reconciler's index of active sessions at `score`
/// (the session's start); with `only_if_absent`, an entry already there
/// stays. Whether it added the room.
pub(super) async fn index_session(
    state: &AppState,
    room: &str,
    score: i64,
    only_if_absent: bool,
) -> Result<bool, Error> {
    let mut redis = state.redis.clone();
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(state.redis_keys.active_sessions());
    if only_if_absent {
        zadd.arg("NX");
    }
    let added: i64 = zadd.arg(score).arg(room).query_async(&mut redis).await?;
    Ok(added == 1)
}

/// Takes the room out of the reconciler's index of active sessions, if
/// the entry there is the one of the session that started at `started_at`.
pub(super) async fn unindex_session(
    state: &AppState,
    room: &str,
    started_at: i64,
) -> Result<(), Error> {
    let mut redis = state.redis.clone();
    scripts::UNINDEX_SESSION
        .key(state.redis_keys.active_sessions())
        .arg(room)
        .arg(started_at)
        .invoke_async::<()>(&mut redis)
        .await?;
    Ok(())
}

/// How many connections are in the room.
pub async fn occupancy(state: &AppState, room: &str) -> Result<u64, Error> {
    let mut redis = state.redis.clone();
    Ok(redis::cmd("HLEN")
        .arg(state.redis_keys.room_members(room))
        .query_async(&mut redis)
        .await?)
}
