//! Folding one subscriber's frames of a room stream into the room's state,
//! checking on the way the rules a stream keeps (SPEC §5): ids ordered,
//! versions without gaps, `session.started` before the joins it carries and
//! `presence.left` before the end it causes, nothing for a connection after
//! its `presence.left`, nothing after `room.deleted`.
//!
//! A `sync` is positioned at the stream's end read *before* its snapshot, so
//! the events right after it may restate what it already holds. Every event
//! carries the full value it sets, so folding them again is harmless; the
//! strict rules apply to what the stream itself said since the `sync`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::sse_text::Frame;

/// Whether the fold learnt a fact from the `sync` or from an event after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Sync,
    Event,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: String,
    pub version: i64,
    pub metadata: Value,
    source: Source,
}

/// The room as one subscriber's stream tells it.
#[derive(Debug, Default, Clone)]
pub struct Fold {
    pub room: String,
    pub metadata: Option<Value>,
    pub version: Option<i64>,
    pub session: Option<Session>,
    /// Occupants → metadata.
    pub occupants: BTreeMap<String, (Value, Source)>,
    /// A session the stream itself ended (the `sync` since says otherwise).
    ended_session: Option<String>,
    /// Connections whose `presence.left` this stream gave since its `sync`.
    left: BTreeSet<String>,
    /// The `sync`'s room version, while events may still restate it.
    overlap: Option<i64>,
    session_overlap: Option<i64>,
    last_id: Option<(String, u64, u64)>,
    /// The id to resume from.
    pub resume_from: Option<String>,
    pub synced: bool,
    /// `room.deleted` (or a `sync` of no room): nothing may follow.
    pub ended: bool,
    pub frames: u64,
}

/// `<epoch>-<ms>-<seq>` as (epoch, ms, seq).
fn parse_id(id: &str) -> Option<(String, u64, u64)> {
    let mut parts = id.splitn(3, '-');
    let epoch = parts.next()?.to_owned();
    Some((
        epoch,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

fn text(data: &Value, field: &str) -> String {
    data[field].as_str().unwrap_or_default().to_owned()
}

impl Fold {
    pub fn new(room: &str) -> Self {
        Self {
            room: room.to_owned(),
            ..Self::default()
        }
    }

    /// Takes in the next frame; `Err` names the rule it broke.
    pub fn apply(&mut self, frame: &Frame) -> Result<(), String> {
        self.frames += 1;
        if self.ended {
            return Err(format!("{} after the stream's end", frame.event));
        }
        self.check_id(frame)?;
        let data = &frame.data;
        if frame.event != "sync" && !self.synced {
            return Err(format!("{} before any sync or replay base", frame.event));
        }
        match frame.event.as_str() {
            "sync" => self.sync(data),
            "room.metadata.updated" | "room.metadata.deleted" => self.room_version(frame)?,
            "session.started" => self.session_started(data)?,
            "session.ended" => self.session_ended(data)?,
            "session.metadata.updated" => self.session_metadata(data)?,
            "presence.joined" => self.joined(data)?,
            "presence.left" => self.left(data)?,
            "connection.metadata.updated" => {
                let id = text(data, "connection_id");
                if self.left.contains(&id) {
                    return Err(format!(
                        "connection.metadata.updated of {id} after its presence.left"
                    ));
                }
                if let Some(occupant) = self.occupants.get_mut(&id) {
                    occupant.0 = data["metadata"].clone();
                }
            }
            "room.cleared" => {}
            "room.deleted" => self.ended = true,
            other => return Err(format!("unknown event type {other}")),
        }
        Ok(())
    }

    /// Ids rise within one epoch; a `sync` may repeat its predecessor's.
    fn check_id(&mut self, frame: &Frame) -> Result<(), String> {
        let id = parse_id(&frame.id).ok_or_else(|| format!("malformed id {:?}", frame.id))?;
        if let Some(last) = &self.last_id
            && last.0 == id.0
        {
            let (before, now) = ((last.1, last.2), (id.1, id.2));
            let ordered = now > before || (frame.event == "sync" && now == before);
            if !ordered {
                return Err(format!(
                    "id {} of {} does not follow {}-{}-{}",
                    frame.id, frame.event, last.0, last.1, last.2
                ));
            }
        }
        self.last_id = Some(id);
        self.resume_from = Some(frame.id.clone());
        Ok(())
    }

    fn sync(&mut self, data: &Value) {
        self.synced = true;
        self.metadata = (!data["metadata"].is_null()).then(|| data["metadata"].clone());
        self.version = data["version"].as_i64();
        self.ended = self.metadata.is_none();
        self.overlap = self.version;
        self.session = (!data["session"].is_null()).then(|| Session {
            id: text(&data["session"], "id"),
            version: data["session"]["version"].as_i64().unwrap_or(-1),
            metadata: data["session"]["metadata"].clone(),
            source: Source::Sync,
        });
        self.session_overlap = self.session.as_ref().map(|s| s.version);
        self.ended_session = None;
        self.left.clear();
        self.occupants = data["occupants"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| (text(o, "id"), (o["metadata"].clone(), Source::Sync)))
            .collect();
    }

    fn room_version(&mut self, frame: &Frame) -> Result<(), String> {
        let version = frame.data["version"].as_i64().ok_or("no version")?;
        if let Some(base) = self.overlap {
            if version <= base {
                return Ok(()); // restates the sync
            }
            self.overlap = None;
        }
        let expected = self.version.map_or(version, |v| v + 1);
        if version != expected {
            return Err(format!(
                "{} version {version} where {expected} was next",
                frame.event
            ));
        }
        self.version = Some(version);
        self.metadata = Some(if frame.event == "room.metadata.deleted" {
            Value::Object(Default::default())
        } else {
            frame.data["metadata"].clone()
        });
        Ok(())
    }

    fn session_started(&mut self, data: &Value) -> Result<(), String> {
        let id = text(data, "session_id");
        let broken = match &self.session {
            Some(open) if open.source == Source::Event && open.id != id => {
                Err(format!("session.started {id} while {} is open", open.id))
            }
            _ if self.ended_session.as_deref() == Some(id.as_str()) => {
                Err(format!("session.started {id} after its session.ended"))
            }
            _ => Ok(()),
        };
        let restated = self.session.as_ref().is_some_and(|s| s.id == id);
        if !restated {
            self.session = Some(Session {
                id,
                version: 0,
                metadata: Value::Object(Default::default()),
                source: Source::Event,
            });
            self.session_overlap = None;
        }
        broken
    }

    fn session_ended(&mut self, data: &Value) -> Result<(), String> {
        let id = text(data, "session_id");
        let broken = if self.ended_session.as_deref() == Some(id.as_str()) {
            Err(format!("session.ended {id} twice"))
        } else if let Some(open) = self
            .session
            .as_ref()
            .filter(|open| open.id != id && open.source == Source::Event)
        {
            Err(format!(
                "session.ended {id} while the stream's session is {}",
                open.id
            ))
        } else if let Some((member, _)) = self
            .occupants
            .iter()
            .find(|(_, (_, s))| *s == Source::Event)
        {
            Err(format!(
                "session.ended {id} before presence.left of {member}"
            ))
        } else {
            Ok(())
        };
        if self.session.as_ref().is_none_or(|open| open.id == id) {
            self.session = None;
        }
        self.ended_session = Some(id);
        broken
    }

    fn session_metadata(&mut self, data: &Value) -> Result<(), String> {
        let id = text(data, "session_id");
        let version = data["version"].as_i64().ok_or("no version")?;
        let Some(session) = self.session.as_mut() else {
            if self.ended_session.as_deref() == Some(id.as_str()) {
                return Err(format!(
                    "session.metadata.updated of {id} after its session.ended"
                ));
            }
            return Ok(()); // of a session the sync had already seen end
        };
        if session.id != id {
            if session.source == Source::Event {
                return Err(format!(
                    "session.metadata.updated of {id} in session {}",
                    session.id
                ));
            }
            return Ok(());
        }
        if let Some(base) = self.session_overlap {
            if version <= base {
                return Ok(());
            }
            self.session_overlap = None;
        }
        if version != session.version + 1 {
            return Err(format!(
                "session.metadata.updated version {version} where {} was next",
                session.version + 1
            ));
        }
        session.version = version;
        session.metadata = data["metadata"].clone();
        Ok(())
    }

    fn joined(&mut self, data: &Value) -> Result<(), String> {
        let id = text(data, "connection_id");
        let broken = if let Some((_, Source::Event)) = self.occupants.get(&id) {
            Err(format!(
                "presence.joined of {id} twice without a presence.left"
            ))
        } else if self.session.is_none() && self.ended_session.is_some() {
            Err(format!(
                "presence.joined of {id} with no session.started since the last end"
            ))
        } else {
            Ok(())
        };
        // Folded all the same, so one broken rule is reported once.
        self.left.remove(&id);
        self.occupants
            .insert(id, (data["metadata"].clone(), Source::Event));
        broken
    }

    fn left(&mut self, data: &Value) -> Result<(), String> {
        let id = text(data, "connection_id");
        if self.occupants.remove(&id).is_none() && self.left.contains(&id) {
            return Err(format!("presence.left of {id} twice"));
        }
        self.left.insert(id);
        Ok(())
    }
}
