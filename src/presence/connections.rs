//! Connections: one client's presence, owned by the token subject that
//! created it, alive while its lease is renewed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::occupancy;
use crate::cache::scripts;
use crate::document::{Preconditions, Write};
use crate::error::Error;
use crate::events::{self, Event, EventKind};
use crate::state::AppState;

/// How many times a metadata write retries when another write got in first.
const MAX_WRITE_ATTEMPTS: usize = 100;

/// A live connection as stored in Redis.
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: String,
    pub owner: String,
    pub metadata: Value,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Its lease: each heartbeat moves `expires_at` to now + `ttl`.
    pub ttl: Duration,
    /// Rooms it is in → when it last asked to join (the attach stamp).
    pub rooms: BTreeMap<String, DateTime<Utc>>,
}

impl Connection {
    /// The connection from its hash and its rooms hash; `None` unless live.
    pub(super) fn from_redis(
        id: &str,
        fields: HashMap<String, String>,
        rooms: HashMap<String, i64>,
    ) -> Option<Self> {
        if fields.get("state").map(String::as_str) != Some("live") {
            return None;
        }
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
        Some(Self {
            id: id.to_owned(),
            owner: fields.get("owner")?.clone(),
            metadata: serde_json::from_str(fields.get("metadata")?).ok()?,
            version: number("version")?,
            created_at: millis(number("created_at")?),
            expires_at: millis(number("expires_at")?),
            ttl: Duration::from_millis(u64::try_from(number("ttl")?).ok()?),
            rooms: rooms
                .into_iter()
                .map(|(room, at)| (room, millis(at)))
                .collect(),
        })
    }
}

/// A Redis timestamp (ms) as a UTC time.
pub fn millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Creates a connection owned by `owner`, within the subject's quota.
pub async fn create(
    state: &AppState,
    owner: &str,
    metadata: Option<Value>,
    ttl: Duration,
) -> Result<Connection, Error> {
    let keys = &state.redis_keys;
    let mut redis = state.redis.clone();
    let id = Uuid::now_v7().to_string();
    let quota = state.settings.presence.max_connections_per_subject;
    // Created with a document: version 1; created empty by the server: 0.
    let (metadata, version) = match metadata {
        Some(doc) => (doc, 1),
        None => (Value::Object(Default::default()), 0),
    };
    let ttl_ms = ttl.as_millis() as i64;
    // The deadline first, then the record, then the quota and the listing:
    // a process killed after any step leaves something the sweeper ends at
    // the deadline (it reads the owner from the record to free the quota).
    let (created_at, expires_at): (i64, i64) = scripts::OPEN_LEASE
        .key(keys.deadlines())
        .arg(&id)
        .arg(ttl_ms)
        .invoke_async(&mut redis)
        .await?;
    let created: i64 = scripts::CREATE_CONNECTION
        .key(keys.connection(&id))
        .arg(owner)
        .arg(metadata.to_string())
        .arg(version)
        .arg(ttl_ms)
        .arg(created_at)
        .arg(expires_at)
        .invoke_async(&mut redis)
        .await?;
    if created == 0 {
        return Err(Error::busy(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis-unavailable",
            "the connection's lease ran out while it was being created; retry",
            1,
        ));
    }
    let reserved: i64 = scripts::RESERVE_QUOTA
        .key(keys.subject_connections(owner))
        .arg(&id)
        .arg(quota)
        .invoke_async(&mut redis)
        .await?;
    if reserved == 0 {
        // Undone now; should this fail, the sweeper ends it at its deadline.
        let undone: redis::RedisResult<()> = async {
            redis::cmd("DEL")
                .arg(keys.connection(&id))
                .query_async::<()>(&mut redis)
                .await?;
            redis::cmd("ZREM")
                .arg(keys.deadlines())
                .arg(&id)
                .query_async::<()>(&mut redis)
                .await
        }
        .await;
        if let Err(err) = undone {
            tracing::debug!(error = %err, "over-quota connection left to the sweeper");
        }
        return Err(Error::client(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-connections",
            format!("a subject may hold at most {quota} connections"),
        ));
    }
    redis::cmd("ZADD")
        .arg(keys.all_connections())
        .arg(0)
        .arg(&id)
        .query_async::<()>(&mut redis)
        .await?;
    Ok(Connection {
        id,
        owner: owner.to_owned(),
        metadata,
        version,
        created_at: millis(created_at),
        expires_at: millis(expires_at),
        ttl,
        rooms: BTreeMap::new(),
    })
}

/// The live connection `id`, or `None`.
pub async fn load(state: &AppState, id: &str) -> Result<Option<Connection>, Error> {
    let keys = &state.redis_keys;
    let mut redis = state.redis.clone();
    let (fields, rooms): (HashMap<String, String>, HashMap<String, i64>) = redis::pipe()
        .hgetall(keys.connection(id))
        .hgetall(keys.connection_rooms(id))
        .query_async(&mut redis)
        .await?;
    Ok(Connection::from_redis(id, fields, rooms))
}

/// Extends the lease; `None` when the connection is gone or already expired.
pub async fn heartbeat(state: &AppState, id: &str) -> Result<Option<DateTime<Utc>>, Error> {
    let keys = &state.redis_keys;
    let mut redis = state.redis.clone();
    let expires_at: Option<i64> = scripts::HEARTBEAT
        .key(keys.connection(id))
        .invoke_async(&mut redis)
        .await?;
    let Some(expires_at) = expires_at else {
        return Ok(None);
    };
    // XX: never re-adds a connection the sweeper has already removed.
    redis::cmd("ZADD")
        .arg(keys.deadlines())
        .arg("XX")
        .arg(expires_at)
        .arg(id)
        .query_async::<()>(&mut redis)
        .await?;
    Ok(Some(millis(expires_at)))
}

/// Applies `write` to the connection's metadata: read, patch, then a
/// compare-and-set on the version, retried when another write got in first
/// (never with `If-Match`, whose check then fails instead).
pub async fn write_metadata(
    state: &AppState,
    id: &str,
    preconditions: &Preconditions,
    write: &Write,
    actor: &str,
) -> Result<Connection, Error> {
    let mut redis = state.redis.clone();
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let mut conn = load(state, id).await?.ok_or_else(|| not_found(id))?;
        let document = write.apply_checked(
            Some((&conn.metadata, conn.version)),
            preconditions,
            &state.settings.limits,
        )?;
        let stored: i64 = scripts::STORE_METADATA
            .key(state.redis_keys.connection(id))
            .arg(conn.version)
            .arg(document.to_string())
            .arg(conn.version + 1)
            .invoke_async(&mut redis)
            .await?;
        match stored {
            1 => {
                conn.version += 1;
                conn.metadata = document;
                publish_metadata_update(state, &conn, write, actor).await;
                return Ok(conn);
            }
            0 => continue,
            _ => return Err(not_found(id)),
        }
    }
    Err(Error::client(
        StatusCode::CONFLICT,
        "write-contention",
        "too many concurrent writes to this connection's metadata; retry",
    ))
}

/// Metadata changes appear on the connection's own stream and on each of
/// its rooms' streams, where they also update the room's profile of it.
async fn publish_metadata_update(state: &AppState, conn: &Connection, write: &Write, actor: &str) {
    let updated = |room: &str| {
        Event::metadata_updated(
            EventKind::ConnectionMetadataUpdated,
            room,
            actor,
            (&conn.metadata, conn.version),
            write,
            Some(("connection_id", &conn.id)),
            &state.settings.limits,
        )
    };
    let mut own = updated("").for_connection(&conn.id);
    own.data["room"] = Value::Null;
    events::publish(state, &[own]).await;

    let keys = &state.redis_keys;
    let metadata = conn.metadata.to_string();
    let mut redis = state.redis.clone();
    for room in conn.rooms.keys() {
        let mut event = updated(room);
        // The script adds the document: sent once, for the event and the profile.
        if let Value::Object(data) = &mut event.data {
            data.remove("metadata");
        }
        let recorded = scripts::OCCUPANT_METADATA
            .key(keys.room_events(room))
            .key(keys.room_profiles(room))
            .arg(state.settings.presence.event_history)
            .arg(event.open_payload())
            .arg(&metadata)
            .arg(conn.version)
            .arg(&conn.id)
            .arg(keys.events_channel())
            .arg(room)
            .arg(state.settings.presence.retention_ms())
            .invoke_async::<()>(&mut redis)
            .await;
        // Logged, not returned, as `events::publish` does: the write has
        // happened, and streams resync after a Redis outage.
        if let Err(err) = recorded {
            tracing::warn!(error = %err, event = event.kind.as_str(), room, "event not appended to Redis");
        }
    }
}

/// Ends a connection: it leaves every room (`presence.left` with `reason`,
/// ending sessions it was the last in) and its state is deleted. Without
/// `force` a connection whose lease was renewed meanwhile is left alone.
/// Returns whether it ended.
pub async fn end(
    state: &AppState,
    id: &str,
    force: bool,
    reason: &'static str,
    actor: &str,
) -> Result<bool, Error> {
    let keys = &state.redis_keys;
    let mut redis = state.redis.clone();
    let reply: Vec<String> = scripts::BEGIN_REAP
        .key(keys.connection(id))
        .key(keys.connection_rooms(id))
        .arg(if force { "1" } else { "0" })
        .invoke_async(&mut redis)
        .await?;
    let mut reply = reply.into_iter();
    match reply.next().as_deref() {
        Some("alive") => {
            if let Some(expires_at) = reply.next() {
                redis::cmd("ZADD")
                    .arg(keys.deadlines())
                    .arg("XX")
                    .arg(expires_at)
                    .arg(id)
                    .query_async::<()>(&mut redis)
                    .await?;
            }
            return Ok(false);
        }
        Some("dead") => {}
        _ => return Err(anyhow::anyhow!("unexpected BEGIN_REAP reply").into()),
    }
    let owner = reply.next().unwrap_or_default();
    for room in reply {
        occupancy::leave(state, &room, id, occupancy::Remover::Ending(reason), actor).await?;
    }
    // The connection's own keys share a slot; each index is a key of its
    // own (and slot, on a Redis Cluster): one command each, sent together.
    let mut indexes = vec![keys.deadlines(), keys.all_connections()];
    if !owner.is_empty() {
        indexes.push(keys.subject_connections(&owner));
    }
    let mut own = redis::cmd("DEL");
    own.arg(keys.connection(id))
        .arg(keys.connection_rooms(id))
        .arg(keys.connection_events(id))
        .arg(keys.connection_streams(id));
    let own = own.query_async::<()>(&mut redis);
    let unlisted = futures_util::future::try_join_all(indexes.into_iter().map(|index| {
        let mut redis = state.redis.clone();
        async move {
            redis::cmd("ZREM")
                .arg(index)
                .arg(id)
                .query_async::<()>(&mut redis)
                .await
        }
    }));
    tokio::try_join!(own, unlisted)?;
    Ok(true)
}

/// A page of connection ids in id order, after `after`, from one index.
pub async fn page_ids(
    state: &AppState,
    index: &str,
    after: Option<&str>,
    count: usize,
) -> Result<Vec<String>, Error> {
    let mut redis = state.redis.clone();
    let min = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(index)
        .arg(min)
        .arg("+")
        .arg("BYLEX")
        .arg("LIMIT")
        .arg(0)
        .arg(count)
        .query_async(&mut redis)
        .await?;
    Ok(ids)
}

pub fn not_found(id: &str) -> Error {
    Error::not_found(
        "connection-not-found",
        format!("connection {id} does not exist or is not visible to this token"),
    )
}
