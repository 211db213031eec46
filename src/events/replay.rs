//! Durable events as the relay appends them from their outbox rows.
//!
//! A `room.metadata.updated` row leaves its document out, for the room's
//! row holds it ([`super::Event::outbox_payload`]): one copy of the
//! document per write in Postgres, not two. While the room is still at the
//! event's version, the document comes from the room's row. Once the room
//! has moved on (a later write committed before this event reached Redis:
//! the writer died, Redis was down, or two writers raced and the later one
//! appends the earlier event first), the document is rebuilt exactly: the
//! document before the event, from the event rebuilt just before it or the
//! newest one the room's stream holds, with the event's recorded patch
//! applied. An event that cannot be rebuilt exactly (its patch was too large
//! to record, or the document before it is not known) becomes a gap at its
//! sequence number: its room's streams start again from a snapshot instead
//! of missing it in silence. A writer whose event missed Redis (an outage,
//! which may also take the stream away) puts the whole event back into its
//! row ([`crate::db::outbox::keep_whole`]), and that is appended as it is.

use serde_json::{Map, Value};

use super::EventKind;
use super::hub::{self, StoredEvent};
use super::relay::Row;
use crate::cache::scripts;
use crate::db::outbox::PendingRow;
use crate::document::{Strategy, Write};
use crate::state::AppState;

/// Pages of the room's stream read back for the document before an event,
/// at most: beyond them the event becomes a gap.
const PAGES_BACK: usize = 4;

/// A room's document at a version.
struct Document {
    version: i64,
    metadata: Value,
}

/// A room's pending rows (in sequence order) as the append script takes
/// them.
pub async fn rows<'a>(state: &AppState, room: &str, pending: &'a [PendingRow]) -> Vec<Row<'a>> {
    // The document after the last row, when known.
    let mut before: Option<Document> = None;
    let mut rows = Vec::with_capacity(pending.len());
    for row in pending {
        let data = match EventKind::parse(&row.event_type) {
            Some(EventKind::RoomMetadataUpdated) => match &row.document {
                Some(document) => with_document(&row.payload, document),
                None => {
                    let rebuilt = rebuild(state, room, &row.payload, before.take()).await;
                    let data = rebuilt.as_ref().map(|(_, data)| data.clone());
                    before = rebuilt.map(|(document, _)| document);
                    data
                }
            },
            kind => {
                before = after(kind, &row.payload, before.take());
                Some(row.payload.clone())
            }
        };
        rows.push(match data {
            Some(data) => Row {
                seq: row.seq,
                kind: &row.event_type,
                data,
            },
            None => Row {
                seq: row.seq,
                kind: scripts::GAP,
                data: "{}".to_owned(),
            },
        });
    }
    rows
}

/// The event's data whole again: its row's payload with `document` as its
/// `metadata`, spliced as text (no payload is decoded on this path).
fn with_document(payload: &str, document: &str) -> Option<String> {
    let open = payload.trim_end().strip_suffix('}')?;
    let separator = if open.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    Some(format!("{open}{separator}\"metadata\":{document}}}"))
}

/// The event of `payload` rebuilt on the document just before it (`before`
/// if that is the one, else the one the room's stream holds), and the
/// document it leaves; `None` if it cannot be rebuilt exactly.
async fn rebuild(
    state: &AppState,
    room: &str,
    payload: &str,
    before: Option<Document>,
) -> Option<(Document, String)> {
    // A row its writer made whole again, its event having missed Redis.
    if let Some(document) = announced(payload) {
        return Some((document, payload.to_owned()));
    }
    // A payload too deep to decode is no event a client could decode either.
    let recorded = Recorded::parse(payload)?;
    let before = match (recorded.strategy, before) {
        (Strategy::Replace, _) => None,
        (_, Some(before)) if before.version == recorded.version - 1 => Some(before),
        _ => document_at(state, room, recorded.version - 1).await,
    };
    recorded.apply(payload, before.as_ref())
}

/// What a `room.metadata.updated` row records of its write.
struct Recorded {
    version: i64,
    strategy: Strategy,
    patch: Value,
}

impl Recorded {
    /// `None` when the row records no patch to apply: it was too large.
    fn parse(payload: &str) -> Option<Self> {
        let mut fields: Map<String, Value> = serde_json::from_str(payload).ok()?;
        if fields.get("patch_omitted") == Some(&Value::Bool(true)) {
            return None;
        }
        Some(Self {
            version: fields.get("version")?.as_i64()?,
            strategy: serde_json::from_value(fields.get("strategy")?.clone()).ok()?,
            patch: fields.remove("patch")?,
        })
    }

    /// The event (its row's `payload` with the document) and the document
    /// this write made of `before`, which a replace does without.
    fn apply(self, payload: &str, before: Option<&Document>) -> Option<(Document, String)> {
        let empty = Value::Object(Map::new());
        let base = match self.strategy {
            Strategy::Replace => &empty,
            _ => {
                &before
                    .filter(|before| before.version == self.version - 1)?
                    .metadata
            }
        };
        let metadata = Write::recorded(self.strategy, self.patch)?
            .apply(base)
            .ok()?;
        let data = with_document(payload, &metadata.to_string())?;
        let document = Document {
            version: self.version,
            metadata,
        };
        Some((document, data))
    }
}

/// What the document is after an event of another kind than
/// `room.metadata.updated`, given what it was before.
fn after(kind: Option<EventKind>, payload: &str, before: Option<Document>) -> Option<Document> {
    match kind {
        Some(EventKind::RoomMetadataDeleted) => emptied(payload),
        Some(kind) if kind.replaces_document_otherwise() => None,
        // A gap, or an event only a script writes: unknown.
        None => None,
        Some(_) => before,
    }
}

/// The `{}` a `room.metadata.deleted` leaves, at its version.
fn emptied(data: &str) -> Option<Document> {
    let fields: Map<String, Value> = serde_json::from_str(data).ok()?;
    Some(Document {
        version: fields.get("version")?.as_i64()?,
        metadata: Value::Object(Map::new()),
    })
}

/// The room's document at `version`, as an event in the last few pages of
/// its stream tells it, unless something after that event (a gap, the
/// room's deletion) makes it unknown.
async fn document_at(state: &AppState, room: &str, version: i64) -> Option<Document> {
    let mut before = None;
    for _ in 0..PAGES_BACK {
        let page = hub::read_page_back(&state.redis, &state.redis_keys, room, before)
            .await
            .ok()?;
        for event in &page.events {
            match tells(event)? {
                Some(document) if document.version == version => return Some(document),
                // Newer than the one sought: the event is there already.
                Some(document) if document.version > version => {}
                Some(_) => return None,
                None => {}
            }
        }
        if !page.is_full() {
            return None;
        }
        before = Some(page.events.last()?.position);
    }
    None
}

/// What `event` says of the document: `None` if it makes it unknown,
/// `Some(None)` if nothing (read on).
fn tells(event: &StoredEvent) -> Option<Option<Document>> {
    if event.kind == scripts::GAP {
        return None;
    }
    match EventKind::parse(&event.kind) {
        Some(EventKind::RoomMetadataUpdated) => announced(&event.data).map(Some),
        Some(EventKind::RoomMetadataDeleted) => emptied(&event.data).map(Some),
        Some(kind) if kind.replaces_document_otherwise() => None,
        _ => Some(None),
    }
}

/// The document a `room.metadata.updated` in the stream announced.
fn announced(data: &str) -> Option<Document> {
    let mut fields: Map<String, Value> = serde_json::from_str(data).ok()?;
    Some(Document {
        version: fields.get("version")?.as_i64()?,
        metadata: fields.remove("metadata")?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn narrow(version: i64, strategy: &str, patch: Value) -> String {
        json!({"room": "r", "version": version, "strategy": strategy, "patch": patch}).to_string()
    }

    fn data(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_document_is_spliced_in_as_text() {
        let spliced = with_document(r#"{"a": 1}"#, r#"{"n": [1]}"#).unwrap();
        assert_eq!(data(&spliced), json!({"a": 1, "metadata": {"n": [1]}}));
        assert_eq!(
            data(&with_document("{}", "{}").unwrap()),
            json!({"metadata": {}})
        );
        assert_eq!(with_document("[1]", "{}"), None);
    }

    fn rebuild(payload: &str, before: Option<&Document>) -> Option<(Document, String)> {
        Recorded::parse(payload)?.apply(payload, before)
    }

    #[test]
    fn an_event_is_rebuilt_on_the_document_just_before_it() {
        let before = Document {
            version: 4,
            metadata: json!({"a": 1, "b": {"c": 1}}),
        };
        let (document, text) = rebuild(
            &narrow(5, "merge-patch", json!({"b": {"c": null}})),
            Some(&before),
        )
        .unwrap();
        assert_eq!(document.version, 5);
        assert_eq!(document.metadata, json!({"a": 1, "b": {}}));
        assert_eq!(data(&text)["metadata"], json!({"a": 1, "b": {}}));
        assert_eq!(data(&text)["patch"], json!({"b": {"c": null}}));

        let json_patch = json!([{"op": "add", "path": "/d", "value": 2}]);
        let (document, _) = rebuild(&narrow(6, "json-patch", json_patch), Some(&document)).unwrap();
        assert_eq!(document.metadata, json!({"a": 1, "b": {}, "d": 2}));
    }

    #[test]
    fn what_cannot_be_rebuilt_exactly_is_not() {
        let before = Document {
            version: 3,
            metadata: json!({}),
        };
        let merge = narrow(5, "merge", json!({"a": 1}));
        assert!(
            rebuild(&merge, Some(&before)).is_none(),
            "a version between"
        );
        assert!(rebuild(&merge, None).is_none(), "nothing before");
        let omitted =
            json!({"version": 4, "strategy": "merge", "patch": null, "patch_omitted": true});
        assert!(rebuild(&omitted.to_string(), Some(&before)).is_none());
        let failing = narrow(4, "json-patch", json!([{"op": "remove", "path": "/x"}]));
        assert!(rebuild(&failing, Some(&before)).is_none());
        let deep = format!(
            r#"{{"version":4,"strategy":"merge","patch":{{"a":{}0{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(rebuild(&deep, Some(&before)).is_none());
    }

    #[test]
    fn a_replace_needs_nothing_before_it() {
        let (document, _) = rebuild(&narrow(9, "replace", json!({"x": 1})), None).unwrap();
        assert_eq!(document.metadata, json!({"x": 1}));
    }

    #[test]
    fn the_stream_tells_the_document_of_metadata_events_only() {
        let event = |kind: &str, data: Value| StoredEvent {
            position: Default::default(),
            kind: kind.to_owned(),
            data: data.to_string(),
        };
        let updated = event(
            "room.metadata.updated",
            json!({"version": 3, "metadata": {"a": 1}}),
        );
        let told = tells(&updated).unwrap().unwrap();
        assert_eq!((told.version, told.metadata), (3, json!({"a": 1})));
        let deleted = event("room.metadata.deleted", json!({"version": 4}));
        assert_eq!(tells(&deleted).unwrap().unwrap().metadata, json!({}));
        assert!(
            tells(&event("presence.joined", json!({})))
                .unwrap()
                .is_none()
        );
        assert!(tells(&event("gap", json!({}))).is_none());
        assert!(tells(&event("room.deleted", json!({}))).is_none());
    }
}
