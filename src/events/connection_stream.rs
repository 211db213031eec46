//! A connection's own stream: the events of every room it is in plus its own
//! metadata changes, behind one cursor, while keeping its lease alive.
//!
//! The cursor (the SSE id, see [`cursor`]) holds a position for the
//! connection's own topic and each room, so a reconnect resumes every room
//! exactly; a room whose history cannot cover the gap (or holds a `gap`
//! entry), that was joined while the client was away, or that the cursor
//! does not name, gets its own snapshot in a `sync`.
//!
//! A room the stream's caller may not read (a join-only member) shows only
//! the connection's own membership: no snapshot in a `sync`, and of its
//! events only this connection's `presence.joined` and `presence.left`,
//! without the room's occupancy (see [`policy::room_view`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;

use super::cursor;
use super::event_id::{StreamPosition, current_epoch};
use super::frame;
use super::hub::{Delivery, Feed, StoredEvent, read_after, retained, stream_end};
use super::subscriber::snapshot;
use super::{EventKind, SYSTEM_ACTOR};
use crate::auth::AuthUser;
use crate::auth::policy::{self, RoomView};
use crate::cache::{Keys, scripts};
use crate::error::Error;
use crate::presence::{Connection, connections};
use crate::state::AppState;

/// Frames buffered between a connection stream's task and its HTTP body.
const BUFFER: usize = 64;

/// Opens the connection's stream; a task keeps it fed (and the lease alive)
/// until the client goes (the body is dropped: its end, token expiry and
/// shutdown are the body's) or the connection ends. Closing the last stream
/// starts the grace period.
pub async fn open(
    state: &AppState,
    viewer: &AuthUser,
    conn: &Connection,
    cursor: Option<String>,
) -> Result<mpsc::Receiver<Bytes>, Error> {
    let mut stream = ConnStream {
        state: state.clone(),
        viewer: viewer.clone(),
        id: conn.id.clone(),
        own: Keys::connection_topic(&conn.id),
        epoch: current_epoch(&state.redis, &state.redis_keys).await?,
        positions: BTreeMap::new(),
        feeds: HashMap::new(),
        receivers: StreamMap::new(),
        left: HashMap::new(),
    };
    let first = stream.start(cursor).await?;
    let mut redis = state.redis.clone();
    let open: i64 = scripts::STREAM_OPENED
        .key(state.redis_keys.connection(&conn.id))
        .key(state.redis_keys.connection_streams(&conn.id))
        .invoke_async(&mut redis)
        .await?;
    if open == 0 {
        return Err(connections::not_found(&conn.id));
    }
    // From the lease itself: `expires_at - created_at` grows with every
    // heartbeat, and renewing that rarely would let the lease run out.
    let refresh = (conn.ttl / 3).max(Duration::from_millis(200));
    let (sender, frames) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let state = stream.state.clone();
        let id = stream.id.clone();
        stream.run(first, sender, refresh).await;
        closed(&state, &id).await;
    });
    Ok(frames)
}

/// Renews the connection's lease every `every` until it ends, then says so.
async fn renew(state: AppState, id: String, every: Duration, ended: oneshot::Sender<()>) {
    let mut lease = tokio::time::interval(every);
    loop {
        lease.tick().await;
        match connections::heartbeat(&state, &id).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let _ = ended.send(());
                return;
            }
            Err(err) => tracing::debug!(error = %err, "stream lease refresh failed"),
        }
    }
}

/// Aborts a task when the one that spawned it is done.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One stream of the connection closed: when it was the last, the
/// connection leaves after the grace period unless a stream reopens.
async fn closed(state: &AppState, id: &str) {
    let key = state.redis_keys.connection_streams(id);
    let mut redis = state.redis.clone();
    let open: redis::RedisResult<i64> = scripts::STREAM_CLOSED
        .key(&key)
        .invoke_async(&mut redis)
        .await;
    // Others still open (n > 0), the connection already ended (-1), or
    // Redis unreachable: then the lease decides.
    if !matches!(open, Ok(0)) {
        return;
    }
    let grace = state.settings.presence.stream_grace;
    tokio::time::sleep(grace).await;
    let still: redis::RedisResult<Option<i64>> =
        redis::cmd("GET").arg(&key).query_async(&mut redis).await;
    if matches!(still, Ok(n) if n.unwrap_or(0) <= 0)
        && let Err(err) = connections::end(state, id, true, "disconnected", SYSTEM_ACTOR).await
    {
        tracing::warn!(error = %err, connection_id = id, "could not end a connection after its stream closed; its lease will");
    }
}

struct ConnStream {
    state: AppState,
    /// Who opened the stream: what of each room it may be shown.
    viewer: AuthUser,
    id: String,
    own: String,
    epoch: String,
    /// Last position given to the client, per topic.
    positions: BTreeMap<String, StreamPosition>,
    feeds: HashMap<String, Arc<Feed>>,
    receivers: StreamMap<String, BroadcastStream<Delivery>>,
    /// Rooms whose `presence.left` of this connection the stream has given,
    /// and after it only what that leave caused, until the connection is
    /// back in. The room's events and the connection's `membership.left`
    /// marker travel in two streams (two slots, on a Redis Cluster), so the
    /// marker may come after later events of the room: the stream stops at
    /// the leave itself.
    left: HashMap<String, Left>,
}

/// Where a room's events stand after this connection's `presence.left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    /// It was the last one out: the `session.ended` it caused still comes.
    SessionEnding,
    Done,
}

impl ConnStream {
    fn cursor(&self) -> String {
        cursor::encode(&self.epoch, &self.positions)
    }

    async fn follow(&mut self, topic: &str) -> Result<(), Error> {
        self.left.remove(topic);
        if self.feeds.contains_key(topic) {
            return Ok(());
        }
        let (feed, receiver) = self.state.hub.subscribe(topic).await?;
        self.feeds.insert(topic.to_owned(), feed);
        self.receivers
            .insert(topic.to_owned(), BroadcastStream::new(receiver));
        Ok(())
    }

    fn unfollow(&mut self, topic: &str) {
        self.feeds.remove(topic);
        self.receivers.remove(topic);
        self.positions.remove(topic);
        self.left.remove(topic);
    }

    async fn rooms(&self) -> Result<Vec<String>, Error> {
        let mut redis = self.state.redis.clone();
        Ok(redis::cmd("HKEYS")
            .arg(self.state.redis_keys.connection_rooms(&self.id))
            .query_async(&mut redis)
            .await?)
    }

    async fn resumable(&self, topic: &str, at: StreamPosition) -> Result<bool, Error> {
        let keys = &self.state.redis_keys;
        let end = stream_end(&self.state.redis, keys, topic).await?;
        Ok(at <= end && retained(&self.state.redis, keys, topic).await?.covers(at))
    }

    /// Subscribes to everything, then replays what the cursor allows and
    /// snapshots the rest.
    async fn start(&mut self, last_id: Option<String>) -> Result<Vec<Bytes>, Error> {
        let mut topics = vec![self.own.clone()];
        topics.extend(self.rooms().await?);
        for topic in &topics {
            self.follow(topic).await?;
        }
        let resume = last_id
            .as_deref()
            .map(|raw| cursor::decode(raw, &self.epoch, &topics))
            .unwrap_or_default();
        let mut stale = Vec::new();
        let mut replay = Vec::new();
        for topic in topics {
            match resume.get(&topic) {
                Some(&at) if self.resumable(&topic, at).await? => {
                    let events =
                        read_after(&self.state.redis, &self.state.redis_keys, &topic, at).await?;
                    self.positions.insert(topic.clone(), at);
                    replay.push((topic, events));
                }
                _ => stale.push(topic),
            }
        }
        // A room whose history since the cursor holds a gap (events Redis
        // lost, or that the relay set aside) starts again from a snapshot
        // instead.
        let (gapped, replay): (Vec<_>, Vec<_>) = replay.into_iter().partition(|(topic, events)| {
            *topic != self.own && events.iter().any(|event| event.kind == scripts::GAP)
        });
        stale.extend(gapped.into_iter().map(|(topic, _)| topic));
        let mut frames = Vec::new();
        if !stale.is_empty() || last_id.is_none() {
            crate::metrics::stream_sync("start");
            frames.push(self.sync(&stale).await?);
        }
        for (topic, events) in replay {
            for event in events {
                // Rooms are already followed as they are now: markers of
                // joins and leaves while away need no handling here.
                if topic == self.own && event.kind.starts_with("membership.") {
                    self.positions.insert(topic.clone(), event.position);
                    continue;
                }
                frames.extend(self.frame(&topic, &event));
            }
        }
        Ok(frames)
    }

    /// A `sync` covering the connection itself and `topics`' rooms, each
    /// positioned at its stream's end read before its snapshot.
    async fn sync(&mut self, topics: &[String]) -> Result<Bytes, Error> {
        let keys = &self.state.redis_keys;
        let mut rooms = Map::new();
        for topic in topics {
            let end = stream_end(&self.state.redis, keys, topic).await?;
            self.positions.insert(topic.clone(), end);
            if *topic != self.own && self.view(topic) == RoomView::Full {
                rooms.insert(topic.clone(), snapshot(&self.state, topic).await?);
            }
        }
        let conn = connections::load(&self.state, &self.id).await?;
        let data = json!({
            "at": Utc::now(),
            "actor": SYSTEM_ACTOR,
            "connection": conn.map(|c| json!({
                "id": c.id, "owner": c.owner, "metadata": c.metadata, "version": c.version,
                "rooms": c.rooms.into_keys().collect::<Vec<_>>(),
            })),
            "rooms": rooms,
        });
        Ok(frame::encode(&self.cursor(), "sync", &data.to_string()))
    }

    /// The frames for one stored event of `topic`; membership markers on
    /// the connection's own topic start or stop following a room.
    async fn deliver(&mut self, topic: &str, event: &StoredEvent) -> Result<Vec<Bytes>, Error> {
        if topic != self.own && event.kind == scripts::GAP {
            return self.resync_room(topic, event).await;
        }
        if topic != self.own || !event.kind.starts_with("membership.") {
            return Ok(self.frame(topic, event).into_iter().collect());
        }
        if self
            .positions
            .get(topic)
            .is_some_and(|at| event.position <= *at)
        {
            return Ok(Vec::new());
        }
        self.positions.insert(topic.to_owned(), event.position);
        let room = event.data.clone();
        if event.kind == "membership.joined" {
            self.follow(&room).await?;
            return Ok(vec![self.sync(&[room]).await?]);
        }
        // Left: whatever happened in the room up to its presence.left
        // (`frame` stops there), then stop following it.
        let at = self.positions.get(&room).copied().unwrap_or_default();
        let rest = read_after(&self.state.redis, &self.state.redis_keys, &room, at).await?;
        let frames = rest
            .iter()
            .filter_map(|event| self.frame(&room, event))
            .collect();
        self.unfollow(&room);
        Ok(frames)
    }

    /// A frame for a room event or the connection's own metadata change,
    /// skipping what this stream already gave.
    fn frame(&mut self, topic: &str, event: &StoredEvent) -> Option<Bytes> {
        if self
            .positions
            .get(topic)
            .is_some_and(|at| event.position <= *at)
        {
            return None;
        }
        self.positions.insert(topic.to_owned(), event.position);
        if topic != self.own && !self.passes(topic, event) {
            return None;
        }
        if topic != self.own && self.view(topic) == RoomView::Membership {
            let data = self.own_membership(event)?;
            return Some(frame::encode(&self.cursor(), &event.kind, &data));
        }
        Some(frame::encode(&self.cursor(), &event.kind, &event.data))
    }

    /// A gap in a room's events: what it stood for cannot be told, so the
    /// room starts again from a `sync` of its own (a room the connection
    /// has left is past caring).
    async fn resync_room(&mut self, room: &str, gap: &StoredEvent) -> Result<Vec<Bytes>, Error> {
        let seen = self
            .positions
            .get(room)
            .is_some_and(|at| gap.position <= *at);
        if seen || self.left.contains_key(room) {
            return Ok(Vec::new());
        }
        crate::metrics::stream_sync("gap");
        Ok(vec![self.sync(&[room.to_owned()]).await?])
    }

    fn view(&self, room: &str) -> RoomView {
        policy::room_view(&self.viewer, room)
    }

    /// For a room the viewer may not read: this connection's own joins and
    /// leaves, without what they tell of the room.
    fn own_membership(&self, event: &StoredEvent) -> Option<String> {
        if !matches!(
            EventKind::parse(&event.kind),
            Some(EventKind::PresenceJoined | EventKind::PresenceLeft)
        ) {
            return None;
        }
        let mut data: Map<String, Value> = serde_json::from_str(&event.data).ok()?;
        if data.get("connection_id").and_then(Value::as_str) != Some(self.id.as_str()) {
            return None;
        }
        data.remove("occupancy");
        data.remove("session_id");
        Some(Value::Object(data).to_string())
    }

    /// Whether a room's event belongs in this stream, following the
    /// connection's own leaves and joins as the room's events tell them.
    fn passes(&mut self, topic: &str, event: &StoredEvent) -> bool {
        // Answered with a `sync` before it gets here (`resync_room`).
        if event.kind == crate::cache::scripts::GAP {
            return false;
        }
        use EventKind::{ConnectionMetadataUpdated, PresenceJoined, PresenceLeft, SessionEnded};
        let kind = EventKind::parse(&event.kind);
        let about = if matches!(
            kind,
            Some(PresenceLeft | PresenceJoined | ConnectionMetadataUpdated)
        ) {
            serde_json::from_str::<Value>(&event.data).ok()
        } else {
            None
        };
        let own = about
            .as_ref()
            .is_some_and(|data| data["connection_id"] == self.id.as_str());
        match (kind, own, self.left.get(topic)) {
            // It comes once, from the connection's own topic.
            (Some(ConnectionMetadataUpdated), true, _) => false,
            (Some(PresenceLeft), true, _) => {
                let last = about.is_some_and(|data| data["occupancy"] == 0);
                let state = if last {
                    Left::SessionEnding
                } else {
                    Left::Done
                };
                self.left.insert(topic.to_owned(), state);
                true
            }
            // In again before the leave's marker came (a join that raced
            // the leave keeps the room in the connection's rooms).
            (Some(PresenceJoined), true, _) => {
                self.left.remove(topic);
                true
            }
            (Some(SessionEnded), _, Some(Left::SessionEnding)) => {
                self.left.insert(topic.to_owned(), Left::Done);
                true
            }
            (_, _, left) => left.is_none(),
        }
    }

    async fn run(mut self, first: Vec<Bytes>, sender: mpsc::Sender<Bytes>, refresh: Duration) {
        for frame in first {
            if sender.send(frame).await.is_err() {
                return;
            }
        }
        // Its own task: a client that reads slowly holds up the sends below,
        // never the lease.
        let (ended_tx, mut ended) = oneshot::channel();
        let renewal = tokio::spawn(renew(
            self.state.clone(),
            self.id.clone(),
            refresh,
            ended_tx,
        ));
        let _renewal = AbortOnDrop(renewal);
        loop {
            let next = tokio::select! {
                () = sender.closed() => return,
                // The connection ended: so does its stream.
                _ = &mut ended => return,
                next = self.receivers.next() => next,
            };
            let Some((topic, delivery)) = next else {
                return;
            };
            let frames = match delivery {
                Ok(Delivery::Event(live)) => match self.deliver(&topic, &live.event).await {
                    Ok(frames) => frames,
                    Err(err) => {
                        tracing::warn!(error = %err, "connection stream failed; closing it");
                        return;
                    }
                },
                Ok(Delivery::Resync) | Err(_) => {
                    crate::metrics::stream_sync("lag");
                    let topics: Vec<String> = self.feeds.keys().cloned().collect();
                    match self.sync(&topics).await {
                        Ok(frame) => vec![frame],
                        Err(_) => return,
                    }
                }
            };
            for frame in frames {
                if sender.send(frame).await.is_err() {
                    return;
                }
            }
        }
    }
}
