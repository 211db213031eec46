//! One subscriber's stream of a room: a `sync` snapshot or an exact replay
//! first, then live events, in order, without duplicates or silent gaps.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures_util::{Stream, stream};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::EventKind;
use super::event_id::{EventId, StreamPosition, current_epoch, room_epoch};
use super::frame;
use super::hub::{Delivery, Feed, LiveEvent, StoredEvent, holds, read_page, retained, stream_end};
use crate::cache::scripts::GAP;
use crate::db;
use crate::error::Error;
use crate::presence::{occupancy, occupants};
use crate::state::AppState;

/// Where a subscription starts.
pub enum Start {
    /// A snapshot (`sync`) of the room now.
    Sync,
    /// Replay after this id, if history still covers it.
    After(String),
}

/// Opens a room subscription: subscribes to the live feed before reading
/// anything (so nothing falls between the first frames and the live ones)
/// and returns its frames. A replay is read from Redis a page at a time, as
/// the client takes it, so a subscriber holds one page, never the whole
/// history; live events wait in the feed meanwhile (one that falls too far
/// behind gets a `sync`). The response body polls the stream itself (no
/// task of its own, so one wake-up per event); it ends after
/// `room.deleted` (live or replayed), after a `sync` that finds the room
/// gone, when the feed closes, or when it is dropped.
pub async fn open(
    state: &AppState,
    room: &str,
    start: Start,
) -> Result<impl Stream<Item = Bytes> + Send + 'static, Error> {
    let (feed, receiver) = state.hub.subscribe(room).await?;
    let mut session = Session {
        state: state.clone(),
        room: room.to_owned(),
        epoch: room_epoch(&current_epoch(&state.redis, &state.redis_keys).await?, room),
        position: StreamPosition::default(),
        ended: false,
    };
    let (backlog, replaying) = session.start(start).await?;
    let live = Live {
        session,
        receiver,
        _feed: feed,
        backlog,
        replaying,
    };
    Ok(stream::unfold(live, Live::next))
}

struct Session {
    state: AppState,
    room: String,
    epoch: String,
    /// The last position this subscriber has been given (or covered by a sync).
    position: StreamPosition,
    /// The room is gone: its `room.deleted` was sent, or a `sync` found no
    /// room. Nothing follows.
    ended: bool,
}

impl Session {
    /// The first frames — the replay's first page when the id is
    /// resumable, else one `sync` — and whether more of the replay follows.
    /// The first page is read here, so a Redis failure is an error answer
    /// rather than a stream that ends at once.
    async fn start(&mut self, start: Start) -> Result<(VecDeque<Bytes>, bool), Error> {
        if let Start::After(raw) = start
            && let Some(id) = EventId::parse(&raw)
            && self.resumable(&id).await?
        {
            self.position = id.position;
            return self.replay_page().await;
        }
        crate::metrics::stream_sync("start");
        Ok((VecDeque::from([self.sync().await?]), false))
    }

    /// The replay's next page after the position, and whether more follows.
    async fn replay_page(&mut self) -> Result<(VecDeque<Bytes>, bool), Error> {
        let page = read_page(
            &self.state.redis,
            &self.state.redis_keys,
            &self.room,
            self.position,
        )
        .await?;
        let mut frames = VecDeque::with_capacity(page.events.len());
        for event in &page.events {
            if event.kind == GAP {
                // What follows would skip events Redis lost: a snapshot
                // instead, positioned at the stream's end.
                crate::metrics::stream_sync("gap");
                frames.push_back(self.sync().await?);
                return Ok((frames, false));
            }
            frames.push_back(self.replayed(event));
            if self.ended {
                // A later incarnation of the room is not this stream's.
                return Ok((frames, false));
            }
        }
        Ok((frames, page.is_full()))
    }

    /// Whether `id` is a position this room's stream gave out and history
    /// still holds everything after it. An id of another room (its epoch
    /// carries the room's tag) or one made up between entries is not.
    async fn resumable(&self, id: &EventId) -> Result<bool, Error> {
        if id.epoch != self.epoch {
            return Ok(false);
        }
        let (redis, keys) = (&self.state.redis, &self.state.redis_keys);
        let end = stream_end(redis, keys, &self.room).await?;
        if id.position > end || !holds(redis, keys, &self.room, id.position).await? {
            return Ok(false);
        }
        let retained = retained(&self.state.redis, &self.state.redis_keys, &self.room).await?;
        let retention = self.state.settings.presence.retention_ms();
        let oldest_kept = (Utc::now().timestamp_millis() as u64).saturating_sub(retention);
        Ok(retained.covers(id.position) && id.position.ms >= oldest_kept)
    }

    /// A `sync` frame with the room's current state, positioned at the
    /// stream's end read *before* the state, so nothing falls in between.
    async fn sync(&mut self) -> Result<Bytes, Error> {
        let epoch = current_epoch(&self.state.redis, &self.state.redis_keys).await?;
        self.epoch = room_epoch(&epoch, &self.room);
        self.position = stream_end(&self.state.redis, &self.state.redis_keys, &self.room).await?;
        let snapshot = snapshot(&self.state, &self.room).await?;
        // A stream that fell behind past the room's deletion skipped its
        // `room.deleted`: this snapshot of no room is its last frame.
        self.ended = snapshot["metadata"].is_null();
        let id = EventId::new(&self.epoch, self.position).to_string();
        Ok(frame::encode(&id, "sync", &snapshot.to_string()))
    }

    fn replayed(&mut self, event: &StoredEvent) -> Bytes {
        self.position = event.position;
        self.ended = event.kind == EventKind::RoomDeleted.as_str();
        event.room_frame(&self.epoch)
    }

    /// A live event's frame: the feed's shared one when both agree on the
    /// epoch (they differ only briefly after Redis lost its history).
    fn live(&mut self, live: &LiveEvent) -> Bytes {
        if live.epoch != self.epoch {
            return self.replayed(&live.event);
        }
        self.position = live.event.position;
        self.ended = live.event.kind == EventKind::RoomDeleted.as_str();
        live.frame().clone()
    }
}

/// The live part of a subscription.
struct Live {
    session: Session,
    receiver: broadcast::Receiver<Delivery>,
    /// The feed lives as long as one of its subscribers holds it.
    _feed: Arc<Feed>,
    /// Frames read but not yet given to the client.
    backlog: VecDeque<Bytes>,
    /// The replay has more pages to read before the live events.
    replaying: bool,
}

impl Live {
    async fn next(mut self) -> Option<(Bytes, Self)> {
        if self.backlog.is_empty() && self.replaying && !self.session.ended {
            // Boxed, as the resync below: most subscribers never replay.
            match Box::pin(self.session.replay_page()).await {
                Ok((frames, more)) => (self.backlog, self.replaying) = (frames, more),
                Err(err) => {
                    // The client resumes from the last id it was given.
                    tracing::warn!(error = %err, room = self.session.room, "cannot read on in a replay; closing the stream");
                    return None;
                }
            }
        }
        if let Some(frame) = self.backlog.pop_front() {
            return Some((frame, self));
        }
        if self.session.ended {
            return None;
        }
        loop {
            let delivery = self.receiver.recv().await;
            // Otherwise a fresh snapshot, for this reason:
            let reason = match delivery {
                Ok(Delivery::Event(event)) if event.event.position <= self.session.position => {
                    continue;
                }
                // Redis lost events before this one.
                Ok(Delivery::Event(event)) if event.event.kind == GAP => "gap",
                Ok(Delivery::Event(event)) => return Some((self.session.live(&event), self)),
                // History was lost, or this subscriber fell behind the feed.
                Ok(Delivery::Resync) => "resync",
                Err(broadcast::error::RecvError::Lagged(_)) => "lag",
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            crate::metrics::stream_sync(reason);
            // Boxed: a rare path whose future would otherwise make every
            // idle subscriber as large as a Postgres query.
            let frame = match Box::pin(self.session.sync()).await {
                Ok(frame) => frame,
                Err(err) => {
                    tracing::warn!(error = %err, room = self.session.room, "cannot resync a stream; closing it");
                    return None;
                }
            };
            return Some((frame, self));
        }
    }
}

/// The `sync` payload: room metadata and version, the active session with
/// its metadata, and the occupants with theirs.
pub async fn snapshot(state: &AppState, room: &str) -> Result<Value, Error> {
    let row = db::rooms::find(&state.db, room).await?;
    let occupancy = occupancy::occupancy(state, room).await?;
    let session = db::sessions::active(&state.db, room).await?.map(|session| {
        json!({
            "id": session.id,
            "started_at": session.started_at,
            "occupancy": occupancy,
            "metadata": session.metadata.0,
            "version": session.version,
        })
    });
    let occupants: Vec<Value> = occupants::all(state, room)
        .await?
        .into_iter()
        .map(|o| {
            json!({
                "id": o.id,
                "owner": o.owner,
                "metadata": o.metadata,
                "joined_at": o.joined_at,
            })
        })
        .collect();
    Ok(json!({
        "room": room,
        "at": Utc::now(),
        "actor": super::SYSTEM_ACTOR,
        "metadata": row.as_ref().map(|r| r.metadata.0.clone()),
        "version": row.as_ref().map(|r| r.version),
        "session": session,
        "occupants": occupants,
    }))
}
