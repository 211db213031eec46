//! This instance's in-memory copy of recently read room documents, so a
//! metadata GET need not ask Postgres.
//!
//! Coherence rests on invalidation, never on entries checking Postgres:
//! - every durable room change appends its event to Redis after the commit,
//!   and that append PUBLISHes the room id to every instance's wake-up
//!   subscription ([`crate::events::hub`]), which invalidates the entry;
//! - the instance that made the change also invalidates it itself before it
//!   answers, so a GET there never returns a version older than one a writer
//!   was told about;
//! - a fill carries the shard's generation from before its Postgres read and
//!   is dropped if an invalidation came in between (a read that raced a
//!   write must not re-insert what the write replaced);
//! - a writer stores the document it wrote the same way, with a ticket
//!   taken before its write statement, so a hot room stays cached;
//! - a wake-up names the sequence number of the change it announces, and
//!   an entry already as new as that (the writer's own) stays;
//! - while the wake-up subscription is down, invalidations may be missed:
//!   every lookup misses and nothing is filled, and re-subscribing empties
//!   the cache.
//!
//! Entries also expire after a maximum age, a bound for changes nothing
//! announces (an operator's SQL).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Shards: lookups from many tasks seldom wait for one lock.
const SHARDS: usize = 16;

/// A room document as served: its version and its JSON text; the room's
/// event sequence number when it was read or written (every durable change
/// of the room has a later one); and the row version Postgres had then
/// (its `xmin`, which any change of the row replaces, even one that leaves
/// `version` alone), which a write starting from this copy requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedDocument {
    pub version: i64,
    pub json: Bytes,
    pub seq: i64,
    pub row: i64,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(CachedDocument),
    /// Read Postgres, then hand the result and this ticket to [`DocumentCache::fill`].
    Miss(FillTicket),
}

/// Permission to fill an entry, valid while no invalidation reached its shard.
#[derive(Debug)]
pub struct FillTicket {
    shard: usize,
    /// `None`: the cache is off or not listening; the fill is dropped.
    generation: Option<u64>,
}

#[derive(Default)]
struct Shard {
    /// Bumped by every invalidation of a room in this shard.
    generation: u64,
    entries: HashMap<String, Entry>,
    /// What the entries cost, as [`cost`] counts it.
    bytes: usize,
}

impl Shard {
    fn remove(&mut self, room: &str) {
        if let Some(entry) = self.entries.remove(room) {
            self.bytes -= cost(room, &entry.document);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// Bytes an entry is counted for: its text, its key and a fixed share for
/// the map slot, the `Bytes` header and the allocator's rounding.
fn cost(room: &str, document: &CachedDocument) -> usize {
    const OVERHEAD: usize = 96;
    document.json.len() + room.len() + OVERHEAD
}

struct Entry {
    document: CachedDocument,
    stored_at: Instant,
}

pub struct DocumentCache {
    shards: Vec<Mutex<Shard>>,
    hasher: std::hash::RandomState,
    /// Bytes each shard may hold (documents and room ids, plus an estimate
    /// of the map's own cost per entry).
    per_shard: usize,
    max_age: Duration,
    /// Whether the wake-up subscription is up, so invalidations arrive.
    listening: AtomicBool,
}

impl DocumentCache {
    /// A cache of at most `max_bytes` (0: off) of documents, each kept at
    /// most `max_age`. It serves nothing until [`Self::start_listening`].
    pub fn new(max_bytes: usize, max_age: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::hash::RandomState::new(),
            per_shard: max_bytes / SHARDS,
            max_age,
            listening: AtomicBool::new(false),
        }
    }

    pub fn lookup(&self, room: &str) -> Lookup {
        let index = self.shard_of(room);
        if self.per_shard == 0 || !self.is_listening() {
            return Lookup::Miss(FillTicket {
                shard: index,
                generation: None,
            });
        }
        let mut shard = self.shard(index);
        match shard.entries.get(room) {
            Some(entry) if entry.stored_at.elapsed() < self.max_age => {
                return Lookup::Hit(entry.document.clone());
            }
            Some(_) => shard.remove(room),
            None => {}
        }
        Lookup::Miss(FillTicket {
            shard: index,
            generation: Some(shard.generation),
        })
    }

    /// Stores what a missed lookup read from Postgres, unless the room was
    /// invalidated since the lookup or a newer version is already here.
    /// Returns whether no invalidation came in since the ticket.
    pub fn fill(&self, room: &str, ticket: FillTicket, document: CachedDocument) -> bool {
        let Some(generation) = ticket.generation else {
            return false;
        };
        let mut shard = self.shard(ticket.shard);
        if shard.generation != generation {
            return false;
        }
        if let Some(entry) = shard.entries.get(room)
            && entry.document.version >= document.version
        {
            return true;
        }
        let needed = cost(room, &document);
        if needed > self.per_shard {
            shard.remove(room);
            return true;
        }
        shard.remove(room);
        // Any entry will do: a lookup refills it at the price of one read.
        while shard.bytes + needed > self.per_shard {
            let Some(evicted) = shard.entries.keys().next().cloned() else {
                break;
            };
            shard.remove(&evicted);
        }
        shard.bytes += needed;
        shard.entries.insert(
            room.to_owned(),
            Entry {
                document,
                stored_at: Instant::now(),
            },
        );
        true
    }

    /// A ticket to store what a write is about to make the room's document,
    /// taken before its write statement is sent.
    pub fn ticket(&self, room: &str) -> FillTicket {
        let index = self.shard_of(room);
        let generation =
            (self.per_shard > 0 && self.is_listening()).then(|| self.shard(index).generation);
        FillTicket {
            shard: index,
            generation,
        }
    }

    /// Stores the document a write made, which replaces whatever copy is
    /// here; if an invalidation came in since the ticket, nothing is stored
    /// and the copy is forgotten.
    pub fn store_written(&self, room: &str, ticket: FillTicket, document: CachedDocument) {
        if !self.fill(room, ticket, document) {
            self.invalidate(room);
        }
    }

    /// Forgets the room's document, and any fill under way for its shard.
    pub fn invalidate(&self, room: &str) {
        let mut shard = self.shard(self.shard_of(room));
        shard.generation += 1;
        shard.remove(room);
    }

    /// What a wake-up for the room's change at `seq` does: forgets an older
    /// copy (and fills under way, as [`Self::invalidate`]); a copy already
    /// as new stays, and so do the fills (older ones lose to it).
    pub fn invalidate_before(&self, room: &str, seq: i64) {
        let mut shard = self.shard(self.shard_of(room));
        if shard
            .entries
            .get(room)
            .is_some_and(|entry| entry.document.seq >= seq)
        {
            return;
        }
        shard.generation += 1;
        shard.remove(room);
    }

    /// The wake-up subscription is (again) up: start from empty, as any
    /// change may have gone unannounced before it was.
    pub fn start_listening(&self) {
        self.clear();
        self.listening.store(true, Ordering::Release);
    }

    /// The wake-up subscription is lost: serve and fill nothing until it is
    /// back.
    pub fn stop_listening(&self) {
        self.listening.store(false, Ordering::Release);
        self.clear();
    }

    /// Whether documents are being served (the wake-up subscription is up).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn clear(&self) {
        for index in 0..self.shards.len() {
            let mut shard = self.shard(index);
            shard.generation += 1;
            shard.clear();
        }
    }

    fn shard_of(&self, room: &str) -> usize {
        (self.hasher.hash_one(room) % SHARDS as u64) as usize
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A poisoned shard only means a panic elsewhere; its contents are fine.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(version: i64) -> CachedDocument {
        CachedDocument {
            version,
            json: Bytes::from(format!("{{\"v\":{version}}}")),
            seq: version,
            row: version,
        }
    }

    fn listening_cache() -> DocumentCache {
        let cache = DocumentCache::new(1 << 20, Duration::from_secs(60));
        cache.start_listening();
        cache
    }

    fn ticket(cache: &DocumentCache, room: &str) -> FillTicket {
        match cache.lookup(room) {
            Lookup::Miss(ticket) => ticket,
            Lookup::Hit(found) => panic!("expected a miss, found {found:?}"),
        }
    }

    fn hit(cache: &DocumentCache, room: &str) -> Option<CachedDocument> {
        match cache.lookup(room) {
            Lookup::Hit(found) => Some(found),
            Lookup::Miss(_) => None,
        }
    }

    #[test]
    fn a_filled_document_is_served() {
        let cache = listening_cache();
        let fill = ticket(&cache, "lobby");
        cache.fill("lobby", fill, document(3));
        assert_eq!(hit(&cache, "lobby"), Some(document(3)));
        assert_eq!(hit(&cache, "other"), None);
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let cache = listening_cache();
        let fill = ticket(&cache, "lobby");
        cache.invalidate("lobby");
        cache.fill("lobby", fill, document(3));
        assert_eq!(hit(&cache, "lobby"), None);
    }

    #[test]
    fn an_invalidation_removes_the_document() {
        let cache = listening_cache();
        let fill = ticket(&cache, "lobby");
        cache.fill("lobby", fill, document(3));
        cache.invalidate("lobby");
        assert_eq!(hit(&cache, "lobby"), None);
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let cache = listening_cache();
        let (first, second) = (ticket(&cache, "lobby"), ticket(&cache, "lobby"));
        cache.fill("lobby", first, document(5));
        cache.fill("lobby", second, document(4));
        assert_eq!(hit(&cache, "lobby"), Some(document(5)));
    }

    #[test]
    fn nothing_is_served_or_filled_while_not_listening() {
        let cache = DocumentCache::new(1 << 20, Duration::from_secs(60));
        let fill = ticket(&cache, "lobby");
        cache.fill("lobby", fill, document(1));
        cache.start_listening();
        assert_eq!(hit(&cache, "lobby"), None);

        let fill = ticket(&cache, "lobby");
        cache.fill("lobby", fill, document(1));
        assert_eq!(hit(&cache, "lobby"), Some(document(1)));
        cache.stop_listening();
        assert_eq!(hit(&cache, "lobby"), None);
    }

    #[test]
    fn losing_the_subscription_drops_fills_under_way() {
        let cache = listening_cache();
        let fill = ticket(&cache, "lobby");
        cache.stop_listening();
        cache.start_listening();
        cache.fill("lobby", fill, document(1));
        assert_eq!(hit(&cache, "lobby"), None);
    }

    #[test]
    fn a_zero_capacity_cache_serves_nothing() {
        let cache = DocumentCache::new(0, Duration::from_secs(60));
        cache.start_listening();
        let fill = ticket(&cache, "lobby");
        cache.fill("lobby", fill, document(1));
        assert_eq!(hit(&cache, "lobby"), None);
    }

    #[test]
    fn entries_expire_after_the_maximum_age() {
        let cache = DocumentCache::new(1 << 20, Duration::ZERO);
        cache.start_listening();
        let fill = ticket(&cache, "lobby");
        cache.fill("lobby", fill, document(1));
        assert_eq!(hit(&cache, "lobby"), None);
    }

    #[test]
    fn a_full_shard_evicts_to_stay_within_its_bytes() {
        let entry = cost("room-000", &document(1));
        // Room for three entries per shard.
        let cache = DocumentCache::new(SHARDS * entry * 3, Duration::from_secs(60));
        cache.start_listening();
        let rooms: Vec<String> = (0..200).map(|i| format!("room-{i:03}")).collect();
        for room in &rooms {
            let fill = ticket(&cache, room);
            cache.fill(room, fill, document(1));
        }
        for shard in &cache.shards {
            let shard = shard.lock().unwrap();
            assert!(
                shard.bytes <= cache.per_shard,
                "{} > {}",
                shard.bytes,
                cache.per_shard
            );
            let counted: usize = shard
                .entries
                .iter()
                .map(|(room, e)| cost(room, &e.document))
                .sum();
            assert_eq!(shard.bytes, counted);
        }
        let held = rooms
            .iter()
            .filter(|room| hit(&cache, room).is_some())
            .count();
        assert!(
            (SHARDS..=SHARDS * 3).contains(&held),
            "{held} documents held"
        );
    }

    #[test]
    fn a_written_document_outlives_its_own_wake_up_but_not_a_later_one() {
        let cache = listening_cache();
        let write = cache.ticket("lobby");
        cache.store_written("lobby", write, document(4));
        cache.invalidate_before("lobby", 4);
        assert_eq!(hit(&cache, "lobby"), Some(document(4)));
        cache.invalidate_before("lobby", 5);
        assert_eq!(hit(&cache, "lobby"), None);
    }

    #[test]
    fn a_write_that_raced_an_invalidation_leaves_nothing_cached() {
        let cache = listening_cache();
        let fill = ticket(&cache, "lobby");
        cache.fill("lobby", fill, document(3));
        let write = cache.ticket("lobby");
        cache.invalidate_before("lobby", 5);
        cache.store_written("lobby", write, document(4));
        assert_eq!(hit(&cache, "lobby"), None);
    }

    #[test]
    fn a_document_larger_than_a_shard_is_not_kept() {
        let cache = DocumentCache::new(SHARDS * 64, Duration::from_secs(60));
        cache.start_listening();
        let fill = ticket(&cache, "lobby");
        let large = CachedDocument {
            seq: 1,
            row: 1,
            version: 1,
            json: Bytes::from(vec![b' '; 1024]),
        };
        cache.fill("lobby", fill, large);
        assert_eq!(hit(&cache, "lobby"), None);
    }
}
