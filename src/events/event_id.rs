//! Event ids: `<epoch>-<ms>-<seq>`, the Redis dataset's epoch plus the entry's
//! stream id. Ids of one room are ordered; an id from another epoch (Redis
//! restarted and lost its history) is never mistaken for a position.

use std::cmp::Ordering;
use std::fmt;

use crate::cache::{Keys, Redis};

/// A position in a room's event history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    pub epoch: String,
    pub position: StreamPosition,
}

/// A Redis stream entry id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamPosition {
    pub ms: u64,
    pub seq: u64,
}

impl StreamPosition {
    /// Parses `<ms>-<seq>`.
    pub fn parse(raw: &str) -> Option<Self> {
        let (ms, seq) = raw.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl EventId {
    pub fn new(epoch: &str, position: StreamPosition) -> Self {
        Self {
            epoch: epoch.to_owned(),
            position,
        }
    }

    /// Parses `<epoch>-<ms>-<seq>`; anything else is `None`.
    pub fn parse(raw: &str) -> Option<Self> {
        let (epoch, position) = raw.split_once('-')?;
        let valid_epoch = !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_hexdigit());
        valid_epoch.then_some(())?;
        Some(Self::new(epoch, StreamPosition::parse(position)?))
    }

    /// Order within one epoch; ids of different epochs are not comparable.
    pub fn cmp_in_epoch(&self, other: &Self) -> Option<Ordering> {
        (self.epoch == other.epoch).then(|| self.position.cmp(&other.position))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.position)
    }
}

/// The epoch of one room's stream ids: the dataset's epoch and a tag of the
/// room, so that an id taken from another room's stream is never mistaken
/// for a position in this one (stream entry ids alone can coincide).
pub fn room_epoch(epoch: &str, room: &str) -> String {
    format!("{epoch}{:08x}", topic_hash(room) >> 32)
}

/// 64-bit FNV-1a: stable across builds and instances, which an id taken on
/// one instance and resumed on another needs.
pub fn topic_hash(topic: &str) -> u64 {
    topic.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The current epoch, created by whoever asks first after Redis (re)starts.
pub async fn current_epoch(redis: &Redis, keys: &Keys) -> redis::RedisResult<String> {
    let mut conn = redis.clone();
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    let (_, epoch): ((), String) = redis::pipe()
        .cmd("SET")
        .arg(keys.epoch())
        .arg(&fresh[..16])
        .arg("NX")
        .cmd("GET")
        .arg(keys.epoch())
        .query_async(&mut conn)
        .await?;
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = EventId::parse("00ff13ab-1732-7").unwrap();
        assert_eq!(id.epoch, "00ff13ab");
        assert_eq!(id.position, StreamPosition { ms: 1732, seq: 7 });
        assert_eq!(id.to_string(), "00ff13ab-1732-7");
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for raw in [
            "", "abc", "zz-1-0", "ab-1", "ab-1-x", "ab--1-0", "-1-0", "ab-1-0-0",
        ] {
            assert_eq!(EventId::parse(raw), None, "{raw}");
        }
    }

    #[test]
    fn rooms_have_epochs_of_their_own() {
        let lobby = room_epoch("00ff", "lobby");
        assert_eq!(lobby.len(), 4 + 8);
        assert!(lobby.starts_with("00ff"));
        assert_eq!(lobby, room_epoch("00ff", "lobby"));
        assert_ne!(lobby, room_epoch("00ff", "lobby2"));
        assert!(EventId::parse(&format!("{lobby}-1-0")).is_some());
    }

    #[test]
    fn ids_compare_only_within_an_epoch() {
        let a = EventId::parse("aa-5-0").unwrap();
        let b = EventId::parse("aa-5-1").unwrap();
        let c = EventId::parse("bb-9-0").unwrap();
        assert_eq!(a.cmp_in_epoch(&b), Some(Ordering::Less));
        assert_eq!(a.cmp_in_epoch(&c), None);
    }
}
