//! Per-instance fan-out. One Redis subscription per instance carries
//! wake-ups ("topic X has new events"; a topic is a room id, or
//! `/conn/<id>` for a connection's own events); one feed per topic with
//! local subscribers then reads its stream from where it left off and
//! broadcasts each entry to them. Wake-ups carry no data, so a lost one
//! only delays delivery: a feed also polls, and every feed catches up when
//! the subscription reconnects. A wake-up for a room also invalidates its
//! document in [`DocumentCache`], which serves nothing while the
//! subscription is down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Notify, broadcast};

use super::event_id::{EventId, StreamPosition, current_epoch, room_epoch};
use super::frame;
use crate::cache::{Keys, Redis};
use crate::document::DocumentCache;
use crate::lifecycle::Lifecycle;

/// Entries one feed buffers for its subscribers; a subscriber that falls
/// further behind gets a `sync` instead.
pub const FEED_CAPACITY: usize = 256;
/// Entries read per XRANGE.
const READ_BATCH: usize = 256;
/// A feed re-reads its stream (and checks the epoch) at least this often.
const POLL: Duration = Duration::from_secs(5);
/// Wait before re-subscribing after the subscription failed.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

/// One stored event, as read back from the room's stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: StreamPosition,
    pub kind: String,
    pub data: String,
}

/// An event as a feed broadcasts it, with the epoch its id belongs to.
#[derive(Debug)]
pub struct LiveEvent {
    pub event: StoredEvent,
    pub epoch: String,
    /// The room-stream frame, encoded by the first subscriber that sends it
    /// and shared by all the others.
    frame: OnceLock<Bytes>,
}

impl StoredEvent {
    /// The room-stream SSE frame, with the id `<epoch>-<ms>-<seq>`.
    pub fn room_frame(&self, epoch: &str) -> Bytes {
        let id = EventId::new(epoch, self.position).to_string();
        frame::encode(&id, &self.kind, &self.data)
    }
}

impl LiveEvent {
    /// The room-stream frame of this event in its feed's epoch.
    pub fn frame(&self) -> &Bytes {
        self.frame
            .get_or_init(|| self.event.room_frame(&self.epoch))
    }
}

/// What a feed sends its subscribers.
#[derive(Debug, Clone)]
pub enum Delivery {
    Event(Arc<LiveEvent>),
    /// The history was lost (Redis restarted): every subscriber resyncs.
    Resync,
}

/// The live feed of one room on this instance; kept alive by its subscribers.
pub struct Feed {
    sender: broadcast::Sender<Delivery>,
    wake: Notify,
}

struct Inner {
    redis: Redis,
    keys: Keys,
    lifecycle: Lifecycle,
    feeds: Mutex<HashMap<String, Weak<Feed>>>,
    /// The room documents cached for GETs: a wake-up for a room is also
    /// its invalidation.
    documents: Arc<DocumentCache>,
    /// Counts the wake-up subscriptions made. A new one follows a lost
    /// connection, after which Redis may be a restarted, empty one: every
    /// feed checks the epoch before it reads on.
    subscriptions: AtomicU64,
}

/// The instance's fan-out hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    pub fn new(
        redis: Redis,
        keys: Keys,
        lifecycle: Lifecycle,
        documents: Arc<DocumentCache>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                keys,
                lifecycle,
                feeds: Mutex::new(HashMap::new()),
                documents,
                subscriptions: AtomicU64::new(0),
            }),
        }
    }

    /// Subscribes to a room's live feed, starting it if needed. Hold the
    /// returned `Arc` for as long as the receiver is used.
    pub async fn subscribe(
        &self,
        room: &str,
    ) -> redis::RedisResult<(Arc<Feed>, broadcast::Receiver<Delivery>)> {
        if let Some(feed) = self.feed(room) {
            let receiver = feed.sender.subscribe();
            return Ok((feed, receiver));
        }
        // Start from the stream's end: older entries are the subscriber's
        // own replay or snapshot.
        let subscription = self.inner.subscriptions.load(Ordering::Acquire);
        let start = stream_end(&self.inner.redis, &self.inner.keys, room).await?;
        let epoch = room_epoch(
            &current_epoch(&self.inner.redis, &self.inner.keys).await?,
            room,
        );
        let mut feeds = self.lock();
        if let Some(feed) = feeds.get(room).and_then(Weak::upgrade) {
            let receiver = feed.sender.subscribe();
            return Ok((feed, receiver));
        }
        let (sender, receiver) = broadcast::channel(FEED_CAPACITY);
        let feed = Arc::new(Feed {
            sender,
            wake: Notify::new(),
        });
        feeds.insert(room.to_owned(), Arc::downgrade(&feed));
        drop(feeds);
        tokio::spawn(run_feed(
            self.inner.clone(),
            room.to_owned(),
            Arc::downgrade(&feed),
            start,
            epoch,
            subscription,
        ));
        Ok((feed, receiver))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Feed>>> {
        // A poisoned map only means a panic elsewhere; its contents are fine.
        self.inner
            .feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn feed(&self, room: &str) -> Option<Arc<Feed>> {
        self.lock().get(room).and_then(Weak::upgrade)
    }

    /// Wakes the room's feed, if this instance has one.
    pub fn wake(&self, room: &str) {
        if let Some(feed) = self.feed(room) {
            feed.wake.notify_one();
        }
    }

    fn wake_all(&self) {
        let feeds: Vec<Arc<Feed>> = self.lock().values().filter_map(Weak::upgrade).collect();
        for feed in feeds {
            feed.wake.notify_one();
        }
    }

    /// Listens for wake-ups on the events channel until the instance stops,
    /// re-subscribing (and waking every feed to catch up) after any failure.
    /// `clients` are tried in turn: one server, or a cluster's seed nodes,
    /// any of which hears every PUBLISH of the cluster.
    pub fn spawn_listener(&self, clients: Vec<redis::Client>) {
        let hub = self.clone();
        tokio::spawn(async move {
            let channel = hub.inner.keys.events_channel();
            let stopped = hub.inner.lifecycle.clone();
            for client in clients.iter().cycle() {
                tokio::select! {
                    () = stopped.stopped() => return,
                    result = hub.listen(client, &channel) => {
                        hub.inner.documents.stop_listening();
                        if let Err(err) = result {
                            tracing::warn!(error = %err, "event wake-up subscription lost; re-subscribing");
                        }
                    }
                }
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
            }
        });
    }

    async fn listen(&self, client: &redis::Client, channel: &str) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        // Whatever was published while we were not subscribed: catch up,
        // in the epoch Redis has now.
        self.inner.subscriptions.fetch_add(1, Ordering::AcqRel);
        self.inner.documents.start_listening();
        self.wake_all();
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            if let Ok(payload) = message.get_payload::<String>() {
                // Only a change of the document drops the cached copy:
                // presence and connection events leave it warm.
                match crate::cache::scripts::document_changed(&payload) {
                    Some((room, seq)) => {
                        self.inner.documents.invalidate_before(room, seq);
                        self.wake(room);
                    }
                    None => self.wake(&payload),
                }
            }
        }
        Err(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
    }
}

async fn run_feed(
    inner: Arc<Inner>,
    room: String,
    feed: Weak<Feed>,
    mut position: StreamPosition,
    mut epoch: String,
    mut subscription: u64,
) {
    let mut poll = tokio::time::interval(POLL);
    poll.tick().await;
    // Set when Redis failed us: it may come back empty, under a new epoch,
    // whose entries must not be read on from an old epoch's position.
    let mut unsure = false;
    loop {
        let polled = {
            let Some(current) = feed.upgrade() else { break };
            tokio::select! {
                () = inner.lifecycle.stopped() => break,
                () = current.wake.notified() => false,
                _ = poll.tick() => true,
            }
        };
        let Some(current) = feed.upgrade() else { break };
        let subscriptions = inner.subscriptions.load(Ordering::Acquire);
        if polled || unsure || subscriptions != subscription {
            let now = current_epoch(&inner.redis, &inner.keys).await;
            match now.map(|now| room_epoch(&now, &room)) {
                Ok(now) if now != epoch => {
                    epoch = now;
                    position = stream_end(&inner.redis, &inner.keys, &room)
                        .await
                        .unwrap_or_default();
                    (unsure, subscription) = (false, subscriptions);
                    let _ = current.sender.send(Delivery::Resync);
                    continue;
                }
                Ok(_) => (unsure, subscription) = (false, subscriptions),
                Err(err) => {
                    tracing::debug!(error = %err, room, "feed cannot reach Redis");
                    unsure = true;
                    continue;
                }
            }
        }
        match read_after(&inner.redis, &inner.keys, &room, position).await {
            Ok(events) => {
                for event in events {
                    position = event.position;
                    // No receivers is fine: the feed ends on the next round.
                    let _ = current.sender.send(Delivery::Event(Arc::new(LiveEvent {
                        event,
                        epoch: epoch.clone(),
                        frame: OnceLock::new(),
                    })));
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, room, "feed cannot read its stream");
                unsure = true;
            }
        }
    }
    let mut feeds = inner
        .feeds
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if feeds
        .get(&room)
        .is_some_and(|weak| weak.upgrade().is_none())
    {
        feeds.remove(&room);
    }
}

/// The id of the room stream's newest entry (`0-0` when empty).
pub async fn stream_end(
    redis: &Redis,
    keys: &Keys,
    room: &str,
) -> redis::RedisResult<StreamPosition> {
    let mut conn = redis.clone();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(keys.topic_events(room))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    Ok(reply
        .ids
        .first()
        .and_then(|entry| StreamPosition::parse(&entry.id))
        .unwrap_or_default())
}

/// Every entry of the room's stream after `position`, oldest first.
pub async fn read_after(
    redis: &Redis,
    keys: &Keys,
    room: &str,
    mut position: StreamPosition,
) -> redis::RedisResult<Vec<StoredEvent>> {
    let mut events = Vec::new();
    loop {
        let page = read_page(redis, keys, room, position).await?;
        let more = page.is_full();
        events.extend(page.events);
        match events.last() {
            Some(last) if more => position = last.position,
            _ => return Ok(events),
        }
    }
}

/// Up to [`READ_BATCH`] entries of a stream, read in one round trip.
pub struct Page {
    pub events: Vec<StoredEvent>,
    /// Entries the read returned, unparsable ones included.
    read: usize,
}

impl Page {
    /// Whether more entries may follow.
    pub fn is_full(&self) -> bool {
        self.read == READ_BATCH
    }
}

/// The next page of the room's stream after `position`, oldest first.
pub async fn read_page(
    redis: &Redis,
    keys: &Keys,
    room: &str,
    position: StreamPosition,
) -> redis::RedisResult<Page> {
    let after = format!("({position}");
    read_range(redis, keys, room, ("XRANGE", &after, "+")).await
}

/// The page of the room's stream before `before` (its newest entries when
/// `None`), newest first.
pub async fn read_page_back(
    redis: &Redis,
    keys: &Keys,
    room: &str,
    before: Option<StreamPosition>,
) -> redis::RedisResult<Page> {
    let before = before.map_or_else(|| "+".to_owned(), |position| format!("({position}"));
    read_range(redis, keys, room, ("XREVRANGE", &before, "-")).await
}

/// Up to [`READ_BATCH`] entries of the room's stream: `XRANGE` or
/// `XREVRANGE` from one end of the range to the other.
async fn read_range(
    redis: &Redis,
    keys: &Keys,
    room: &str,
    (command, from, to): (&str, &str, &str),
) -> redis::RedisResult<Page> {
    let mut conn = redis.clone();
    let reply: redis::streams::StreamRangeReply = redis::cmd(command)
        .arg(keys.topic_events(room))
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(READ_BATCH)
        .query_async(&mut conn)
        .await?;
    Ok(Page::from(reply))
}

impl From<redis::streams::StreamRangeReply> for Page {
    fn from(reply: redis::streams::StreamRangeReply) -> Self {
        let read = reply.ids.len();
        let events = reply
            .ids
            .into_iter()
            .filter_map(|entry| {
                Some(StoredEvent {
                    position: StreamPosition::parse(&entry.id)?,
                    kind: entry.get("type").unwrap_or_default(),
                    data: entry.get("data").unwrap_or_default(),
                })
            })
            .collect();
        Self { events, read }
    }
}

/// What a stream still holds of its history.
#[derive(Debug, Clone, Copy)]
pub struct Retained {
    /// Its first entry (`0-0` when there is no stream).
    first: StreamPosition,
    /// Nothing was ever trimmed from it.
    whole: bool,
}

impl Retained {
    /// Whether a client last positioned at `at` can be caught up from the
    /// stream: `at` is at or after its first entry, or the client has seen
    /// nothing (`0-0`) and nothing was trimmed. A position before the first
    /// entry of an untrimmed stream is one the stream never held: its
    /// history was lost (on a Redis Cluster, a master that restarted empty
    /// while the epoch key lived on another one), and a replay would skip
    /// the lost events without a word.
    pub fn covers(&self, at: StreamPosition) -> bool {
        at >= self.first || (self.whole && at == StreamPosition::default())
    }
}

/// Whether the topic's stream holds an entry at exactly `at`: a position a
/// subscriber was given is one (or the empty stream's start), and anything
/// else was made up.
pub async fn holds(
    redis: &Redis,
    keys: &Keys,
    room: &str,
    at: StreamPosition,
) -> redis::RedisResult<bool> {
    if at == StreamPosition::default() {
        return Ok(true);
    }
    let mut conn = redis.clone();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys.topic_events(room))
        .arg(at.to_string())
        .arg(at.to_string())
        .query_async(&mut conn)
        .await?;
    Ok(!reply.ids.is_empty())
}

/// What the topic's stream still holds, from `XINFO STREAM`.
pub async fn retained(redis: &Redis, keys: &Keys, room: &str) -> redis::RedisResult<Retained> {
    let mut conn = redis.clone();
    let info: redis::RedisResult<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(keys.topic_events(room))
        .query_async(&mut conn)
        .await;
    let info = match info {
        Ok(info) => info,
        // No stream yet: nothing was ever trimmed.
        Err(err)
            if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
        {
            return Ok(Retained {
                first: StreamPosition::default(),
                whole: true,
            });
        }
        Err(err) => return Err(err),
    };
    let number = |name: &str| {
        info.get(name)
            .and_then(|value| redis::from_redis_value_ref::<u64>(value).ok())
    };
    let first = info
        .get("recorded-first-entry-id")
        .and_then(|value| redis::from_redis_value_ref::<String>(value).ok())
        .and_then(|id| StreamPosition::parse(&id));
    Ok(match first {
        Some(first) => Retained {
            first,
            whole: number("entries-added") <= number("length"),
        },
        // Unreadable: resume nothing, so the client gets a `sync`.
        None => Retained {
            first: StreamPosition {
                ms: u64::MAX,
                seq: 0,
            },
            whole: false,
        },
    })
}
