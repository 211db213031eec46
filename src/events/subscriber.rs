//! One subscriber's stream of a room: a `sync` snapshot or an exact replay
//! first, then live events, in order, without duplicates or silent gaps.

use std::time::Duration;

use axum::response::sse::Event as SseEvent;
use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::hub::{Delivery, StoredEvent, read_after, resumable_from, stream_end};
use super::ids::{EventId, StreamPosition, current_epoch};
use crate::db;
use crate::error::Error;
use crate::presence::occupancy;
use crate::state::AppState;

/// Frames buffered per subscriber between its task and its HTTP body.
pub const SUBSCRIBER_BUFFER: usize = 64;

/// Where a subscription starts.
pub enum Start {
    /// A snapshot (`sync`) of the room now.
    Sync,
    /// Replay after this id, if history still covers it.
    After(String),
}

/// Opens a room subscription: checks the room exists, subscribes to the live
/// feed before reading anything, and returns the frames' receiver; a task
/// keeps it fed until the client goes, the token expires, the room is
/// deleted or the instance stops.
pub async fn open(
    state: &AppState,
    room: &str,
    start: Start,
    token_expires_at: u64,
) -> Result<mpsc::Receiver<SseEvent>, Error> {
    let (feed, receiver) = state.hub.subscribe(room).await?;
    let mut session = Session {
        state: state.clone(),
        room: room.to_owned(),
        epoch: current_epoch(&state.redis, &state.redis_keys).await?,
        position: StreamPosition::default(),
    };
    let first = session.start(start).await?;
    let (sender, frames) = mpsc::channel(SUBSCRIBER_BUFFER);
    tokio::spawn(async move {
        // The feed lives as long as one of its subscribers holds it.
        let _feed = feed;
        let _open = crate::metrics::OpenStream::start();
        session.run(first, receiver, sender, token_expires_at).await;
    });
    Ok(frames)
}

struct Session {
    state: AppState,
    room: String,
    epoch: String,
    /// The last position this subscriber has been given (or covered by a sync).
    position: StreamPosition,
}

impl Session {
    /// The first frames: a replay when the id is resumable, else one `sync`.
    async fn start(&mut self, start: Start) -> Result<Vec<SseEvent>, Error> {
        if let Start::After(raw) = start
            && let Some(id) = EventId::parse(&raw)
            && self.resumable(&id).await?
        {
            self.position = id.position;
            let events = read_after(
                &self.state.redis,
                &self.state.redis_keys,
                &self.room,
                self.position,
            )
            .await?;
            return Ok(events.iter().map(|event| self.deliver(event)).collect());
        }
        crate::metrics::stream_sync("start");
        Ok(vec![self.sync().await?])
    }

    /// Whether history still holds everything after `id`.
    async fn resumable(&self, id: &EventId) -> Result<bool, Error> {
        if id.epoch != self.epoch {
            return Ok(false);
        }
        let end = stream_end(&self.state.redis, &self.state.redis_keys, &self.room).await?;
        if id.position > end {
            return Ok(false);
        }
        let oldest = resumable_from(&self.state.redis, &self.state.redis_keys, &self.room).await?;
        let retention = self.state.settings.presence.event_retention.as_millis() as u64;
        let oldest_kept = (Utc::now().timestamp_millis() as u64).saturating_sub(retention);
        Ok(id.position >= oldest && id.position.ms >= oldest_kept)
    }

    /// A `sync` frame with the room's current state, positioned at the
    /// stream's end read *before* the state, so nothing falls in between.
    async fn sync(&mut self) -> Result<SseEvent, Error> {
        self.epoch = current_epoch(&self.state.redis, &self.state.redis_keys).await?;
        self.position = stream_end(&self.state.redis, &self.state.redis_keys, &self.room).await?;
        let snapshot = snapshot(&self.state, &self.room).await?;
        Ok(SseEvent::default()
            .id(EventId::new(&self.epoch, self.position).to_string())
            .event("sync")
            .data(snapshot.to_string()))
    }

    fn deliver(&mut self, event: &StoredEvent) -> SseEvent {
        self.position = event.position;
        SseEvent::default()
            .id(EventId::new(&self.epoch, event.position).to_string())
            .event(&event.kind)
            .data(&event.data)
    }

    async fn run(
        mut self,
        first: Vec<SseEvent>,
        mut receiver: broadcast::Receiver<Delivery>,
        sender: mpsc::Sender<SseEvent>,
        token_expires_at: u64,
    ) {
        for frame in first {
            if sender.send(frame).await.is_err() {
                return;
            }
        }
        let expires_in =
            Duration::from_secs(token_expires_at.saturating_sub(Utc::now().timestamp() as u64));
        let token_expired = tokio::time::sleep(expires_in);
        tokio::pin!(token_expired);
        let stopped = self.state.lifecycle.clone();
        loop {
            let delivery = tokio::select! {
                () = stopped.stopped() => return,
                () = &mut token_expired => return,
                () = sender.closed() => return,
                delivery = receiver.recv() => delivery,
            };
            let frame = match delivery {
                Ok(Delivery::Event(event)) if event.position > self.position => {
                    let ends = event.kind == "room.deleted";
                    let frame = self.deliver(&event);
                    if ends {
                        let _ = sender.send(frame).await;
                        return;
                    }
                    frame
                }
                Ok(Delivery::Event(_)) => continue,
                // Fell behind the feed, or history was lost: a fresh snapshot.
                Ok(Delivery::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    crate::metrics::stream_sync(if matches!(delivery, Ok(Delivery::Resync)) {
                        "resync"
                    } else {
                        "lag"
                    });
                    match self.sync().await {
                        Ok(frame) => frame,
                        Err(err) => {
                            tracing::warn!(error = %err, room = self.room, "cannot resync a stream; closing it");
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if sender.send(frame).await.is_err() {
                return;
            }
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
    let occupants: Vec<Value> = occupancy::occupants(state, room)
        .await?
        .into_iter()
        .map(|o| {
            json!({
                "id": o.connection.id,
                "owner": o.connection.owner,
                "metadata": o.connection.metadata,
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
