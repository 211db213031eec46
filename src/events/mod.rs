//! Change events: what happened in a room, with the payloads of SPEC §5.
//!
//! Durable changes record their event in the Postgres outbox inside the
//! change's transaction and append it to the room's Redis stream after the
//! commit. Ephemeral changes (presence, connection metadata) are appended to
//! the stream directly, presence inside the same Lua script as the change.

pub mod connection_stream;
pub mod cursor;
pub mod event_id;
pub mod frame;
pub mod hub;
pub mod kind;
pub mod relay;
pub mod replay;
pub mod subscriber;

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::cache::scripts;
use crate::document::{DocumentLimits, Write};
use crate::error::Error;
use crate::state::AppState;
pub use kind::EventKind;

/// The `actor` of changes nobody asked for (lease expiry, reconciliation).
pub const SYSTEM_ACTOR: &str = "system";

/// One event of one room.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The SSE event type, e.g. `room.metadata.updated`.
    pub kind: EventKind,
    /// Where it is published: a room id, or a connection's topic
    /// (`/conn/<id>`) for its own stream.
    pub room: String,
    /// The SSE `data`: `room`, `at`, `actor` and the type's own fields.
    pub data: Value,
    /// For durable events: the room's sequence number, its outbox key.
    pub outbox: Option<i64>,
}

impl Event {
    /// An event with the common fields plus `fields` (an object).
    pub fn new(kind: EventKind, room: &str, actor: &str, fields: Value) -> Self {
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
            outbox: None,
        }
    }

    /// `room.metadata.updated`, `session.metadata.updated` or
    /// `connection.metadata.updated`: the full document and the patch as sent
    /// (`null`, with `patch_omitted: true`, when it exceeds `limits`).
    pub fn metadata_updated(
        kind: EventKind,
        room: &str,
        actor: &str,
        (metadata, version): (&Value, i64),
        write: &Write,
        scope: Option<(&'static str, &str)>,
        limits: &DocumentLimits,
    ) -> Self {
        let mut fields = json!({
            "version": version,
            "metadata": metadata,
            "strategy": write.strategy(),
        });
        if let Value::Object(map) = &mut fields {
            // The document is always there in full; the patch only if it is
            // no bigger than a document may be.
            if limits.fits_in_event(write.sent()) {
                map.insert("patch".to_owned(), write.sent().clone());
            } else {
                map.insert("patch".to_owned(), Value::Null);
                map.insert("patch_omitted".to_owned(), true.into());
            }
        }
        if let (Some((name, id)), Value::Object(map)) = (scope, &mut fields) {
            map.insert(name.to_owned(), id.into());
        }
        Self::new(kind, room, actor, fields)
    }

    /// A copy of this event for a connection's own stream.
    pub fn for_connection(&self, connection_id: &str) -> Self {
        Self {
            room: crate::cache::Keys::connection_topic(connection_id),
            outbox: None,
            ..self.clone()
        }
    }

    /// What the outbox row of this durable event holds: its data less what
    /// the room's row holds anyway, so a metadata write stores its document
    /// once. A `room.metadata.updated` leaves out its document; the relay
    /// puts it back ([`relay::Row`]s come from [`replay`]).
    pub fn outbox_payload(&self) -> impl serde::Serialize + '_ {
        let omitted: &[&str] = if self.kind.leaves_document_to_room() {
            &["metadata"]
        } else {
            &[]
        };
        OutboxPayload {
            data: &self.data,
            omitted,
        }
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

/// An event's data less some of its fields.
struct OutboxPayload<'a> {
    data: &'a Value,
    omitted: &'a [&'a str],
}

impl serde::Serialize for OutboxPayload<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.data {
            Value::Object(map) => serializer.collect_map(
                map.iter()
                    .filter(|(name, _)| !self.omitted.contains(&name.as_str())),
            ),
            data => data.serialize(serializer),
        }
    }
}

/// Appends events of changes that already happened to their rooms' streams,
/// in order, waking every instance's feeds (and invalidating their cached
/// room documents; this instance's at once, except for a metadata write's,
/// whose writer stores the new document itself). Durable events go through the
/// sequence guard and, once in Redis, are deleted from the outbox.
/// A Redis failure is logged, not returned: durable events wait in the
/// outbox for the relay (a metadata event's row made whole first, see
/// [`replay`]); ephemeral ones are lost with the outage, which
/// stream clients learn from the `sync` they get when it ends.
pub async fn publish(state: &AppState, events: &[Event]) {
    // Before the caller answers, whatever becomes of the appends: a GET on
    // this instance must not serve what these changes replaced.
    let document_changed =
        |event: &&Event| event.outbox.is_some() && event.kind.replaces_document_otherwise();
    for event in events.iter().filter(document_changed) {
        state.documents.invalidate(&event.room);
    }
    for event in events {
        if let Err(err) = publish_one(state, event).await {
            tracing::warn!(error = %err, event = event.kind.as_str(), room = event.room, "event not appended to Redis");
            if event.outbox.is_some()
                && event.kind.leaves_document_to_room()
                && let Err(err) = crate::db::outbox::keep_whole(&state.db, event).await
            {
                tracing::warn!(error = %err, room = event.room, "outbox row not made whole; the relay rebuilds the event if it can");
            }
        }
    }
}

async fn publish_one(state: &AppState, event: &Event) -> Result<(), Error> {
    let keys = &state.redis_keys;
    let history = state.settings.presence.event_history;
    let mut redis = state.redis.clone();
    match event.outbox {
        Some(seq) => {
            let row = relay::Row {
                seq,
                kind: event.kind.as_str(),
                data: event.data.to_string(),
            };
            let results = relay::append_durable(state, &event.room, &[row], false).await?;
            match results.first() {
                Some(0..) => state.outbox_marks.mark(&event.room, seq),
                // Held back: an earlier event is missing; append it first.
                Some(_) => relay::catch_up(state, &event.room, seq).await?,
                None => {}
            }
        }
        None => {
            scripts::APPEND_EPHEMERAL
                .key(keys.topic_events(&event.room))
                .arg(history)
                .arg(event.kind.as_str())
                .arg(event.data.to_string())
                .arg(keys.events_channel())
                .arg(&event.room)
                .arg(state.settings.presence.retention_ms())
                .invoke_async::<()>(&mut redis)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_the_common_fields() {
        let event = Event::new(
            EventKind::SessionStarted,
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
            EventKind::PresenceJoined,
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
