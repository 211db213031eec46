//! Change events: what happened in a room, with the payloads of SPEC §5.
//!
//! Durable changes record their event in the Postgres outbox inside the
//! change's transaction and append it to the room's Redis stream after the
//! commit. Ephemeral changes (presence, connection metadata) are appended to
//! the stream directly, presence inside the same Lua script as the change.

pub mod hub;
pub mod ids;
pub mod subscriber;

use chrono::{SecondsFormat, Utc};
use redis::aio::ConnectionManager;
use serde_json::{Map, Value, json};

use crate::cache::Keys;
use crate::document::Write;

/// The `actor` of changes nobody asked for (lease expiry, reconciliation).
pub const SYSTEM_ACTOR: &str = "system";

/// One event of one room.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The SSE event type, e.g. `room.metadata.updated`.
    pub kind: &'static str,
    pub room: String,
    /// The SSE `data`: `room`, `at`, `actor` and the type's own fields.
    pub data: Value,
}

impl Event {
    /// An event with the common fields plus `fields` (an object).
    pub fn new(kind: &'static str, room: &str, actor: &str, fields: Value) -> Self {
        let mut data = Map::new();
        data.insert("room".into(), room.into());
        data.insert(
            "at".into(),
            Utc::now()
                .to_rfc3339_opts(SecondsFormat::Millis, true)
                .into(),
        );
        data.insert("actor".into(), actor.into());
        if let Value::Object(fields) = fields {
            data.extend(fields);
        }
        Self {
            kind,
            room: room.to_owned(),
            data: Value::Object(data),
        }
    }

    /// `room.metadata.updated`, `session.metadata.updated` or
    /// `connection.metadata.updated`: the full document and the patch as sent.
    pub fn metadata_updated(
        kind: &'static str,
        room: &str,
        actor: &str,
        version: i64,
        metadata: &Value,
        write: &Write,
        scope: Option<(&'static str, &str)>,
    ) -> Self {
        let mut fields = json!({
            "version": version,
            "metadata": metadata,
            "patch": write.sent(),
            "strategy": write.strategy(),
        });
        if let (Some((name, id)), Value::Object(map)) = (scope, &mut fields) {
            map.insert(name.to_owned(), id.into());
        }
        Self::new(kind, room, actor, fields)
    }

    /// The JSON of `data` without its closing brace, so a Lua script can
    /// append fields only it knows (the occupancy after the change) without
    /// decoding, and so without re-encoding, the user's document.
    pub fn open_payload(&self) -> String {
        let mut text = self.data.to_string();
        text.pop();
        text
    }
}

/// Appends events to their rooms' streams, in order, trimming each stream to
/// about `history` entries.
pub async fn append(
    redis: &ConnectionManager,
    keys: &Keys,
    history: usize,
    events: &[Event],
) -> redis::RedisResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    let mut rooms: Vec<&str> = Vec::new();
    for event in events {
        pipe.cmd("XADD")
            .arg(keys.room_events(&event.room))
            .arg("MAXLEN")
            .arg("~")
            .arg(history)
            .arg("*")
            .arg("type")
            .arg(event.kind)
            .arg("data")
            .arg(event.data.to_string())
            .ignore();
        if !rooms.contains(&event.room.as_str()) {
            rooms.push(&event.room);
        }
    }
    for room in rooms {
        pipe.publish(keys.events_channel(), room).ignore();
    }
    let mut conn = redis.clone();
    pipe.query_async::<()>(&mut conn).await
}

/// Appends events of a committed change. A Redis failure is logged, not
/// returned: the change is durable, and its outbox row outlives the outage.
pub async fn publish_committed(
    redis: &ConnectionManager,
    keys: &Keys,
    history: usize,
    events: &[Event],
) {
    if let Err(err) = append(redis, keys, history, events).await {
        tracing::warn!(error = %err, "events not appended to Redis; kept in the outbox");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_the_common_fields() {
        let event = Event::new(
            "session.started",
            "lobby",
            "alice",
            json!({"session_id": "s1"}),
        );
        assert_eq!(event.data["room"], "lobby");
        assert_eq!(event.data["actor"], "alice");
        assert_eq!(event.data["session_id"], "s1");
        assert!(event.data["at"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn open_payload_takes_more_fields() {
        let event = Event::new(
            "presence.joined",
            "lobby",
            "alice",
            json!({"metadata": {"n": 1}}),
        );
        let completed = format!("{},\"occupancy\":3}}", event.open_payload());
        let parsed: Value = serde_json::from_str(&completed).unwrap();
        assert_eq!(parsed["occupancy"], 3);
        assert_eq!(parsed["metadata"], json!({"n": 1}));
    }
}
