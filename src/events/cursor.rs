//! The connection stream's cursor (its SSE `id`): the epoch and a position
//! per topic, packed so it stays small whatever the room ids and bounded
//! whatever the number of rooms — it travels in every frame and comes back
//! in a `Last-Event-ID` header, which common proxies cap at 8 KiB.
//!
//! Layout (then base64url): version byte; epoch length and bytes; entry
//! count; per entry, ordered by position, a 64-bit FNV-1a hash of the topic
//! name, the ms as a varint delta from the previous entry's, and the seq as
//! a varint. About 12 bytes a topic, so 64 rooms take about 1 KiB of id.
//!
//! A hash stands for a name: on resume, it is looked up among the
//! connection's current topics. A hash that names none of them is ignored,
//! and two current topics with one hash both count as unknown — either way
//! the room gets a `sync`, never another room's position. Past
//! [`MAX_ENCODED`], the entries with the oldest positions are left out (they
//! get a `sync` on resume), and a longer id is not decoded at all.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::event_id::{StreamPosition, topic_hash};

const VERSION: u8 = 1;
/// The longest id written or read, in characters.
pub const MAX_ENCODED: usize = 2048;
/// Bytes that fit in `MAX_ENCODED` characters of base64url.
const MAX_BYTES: usize = MAX_ENCODED / 4 * 3;

/// The cursor for `positions` (topic name → position) in `epoch`.
pub fn encode(epoch: &str, positions: &BTreeMap<String, StreamPosition>) -> String {
    let mut entries: Vec<(u64, StreamPosition)> = positions
        .iter()
        .map(|(topic, at)| (topic_hash(topic), *at))
        .collect();
    entries.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    // Too many to fit: leave out the oldest until the rest does.
    let mut keep = entries.len();
    loop {
        let packed = pack(epoch, &entries[entries.len() - keep..]);
        if packed.len() <= MAX_BYTES || keep == 0 {
            return URL_SAFE_NO_PAD.encode(packed);
        }
        keep = keep * 9 / 10;
    }
}

/// `entries` in position order.
fn pack(epoch: &str, entries: &[(u64, StreamPosition)]) -> Vec<u8> {
    let epoch = &epoch.as_bytes()[..epoch.len().min(64)];
    let mut out = Vec::with_capacity(epoch.len() + entries.len() * 12 + 8);
    out.push(VERSION);
    varint(&mut out, epoch.len() as u64);
    out.extend_from_slice(epoch);
    varint(&mut out, entries.len() as u64);
    let mut previous = 0;
    for (hash, at) in entries {
        out.extend_from_slice(&hash.to_le_bytes());
        varint(&mut out, at.ms - previous);
        varint(&mut out, at.seq);
        previous = at.ms;
    }
    out
}

/// The positions `raw` holds for `topics` (the connection's current ones),
/// if it is a cursor of `epoch`; anything else (another epoch, garbage, too
/// long) holds none.
pub fn decode(raw: &str, epoch: &str, topics: &[String]) -> BTreeMap<String, StreamPosition> {
    let Some((cursor_epoch, by_hash)) = parse(raw) else {
        return BTreeMap::new();
    };
    if cursor_epoch != epoch.as_bytes() {
        return BTreeMap::new();
    }
    let mut named: HashMap<u64, Vec<&String>> = HashMap::new();
    for topic in topics {
        named.entry(topic_hash(topic)).or_default().push(topic);
    }
    by_hash
        .into_iter()
        .filter_map(|(hash, at)| match named.get(&hash)?.as_slice() {
            [topic] => Some(((*topic).clone(), at)),
            // A collision among the current topics: neither is known.
            _ => None,
        })
        .collect()
}

fn parse(raw: &str) -> Option<(Vec<u8>, HashMap<u64, StreamPosition>)> {
    if raw.len() > MAX_ENCODED {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    let mut reader = Reader(&bytes);
    (reader.byte()? == VERSION).then_some(())?;
    let epoch_len = usize::try_from(reader.varint()?).ok()?;
    let epoch = reader.take(epoch_len)?.to_vec();
    let count = usize::try_from(reader.varint()?).ok()?;
    // Each entry takes at least 10 bytes: a count beyond that is a lie.
    (count <= reader.0.len() / 10).then_some(())?;
    let mut positions = HashMap::with_capacity(count);
    let mut ms: u64 = 0;
    for _ in 0..count {
        let hash = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
        ms = ms.checked_add(reader.varint()?)?;
        let seq = reader.varint()?;
        positions.insert(hash, StreamPosition { ms, seq });
    }
    reader.0.is_empty().then_some((epoch, positions))
}

/// LEB128.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        (n <= self.0.len()).then_some(())?;
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, seq: u64) -> StreamPosition {
        StreamPosition { ms, seq }
    }

    fn topics(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("room-{i:03}-{}", "x".repeat(118)))
            .collect()
    }

    #[test]
    fn positions_round_trip_for_the_current_topics() {
        let topics = topics(3);
        let positions: BTreeMap<String, StreamPosition> = [
            (topics[0].clone(), at(1_733_000_000_123, 0)),
            (topics[1].clone(), at(1_733_000_000_100, 7)),
            (topics[2].clone(), at(0, 0)),
        ]
        .into();
        let raw = encode("5d1c0f3a9b2e4c71", &positions);
        assert_eq!(decode(&raw, "5d1c0f3a9b2e4c71", &topics), positions);
        // Another epoch, or a topic the connection no longer has.
        assert!(decode(&raw, "00000000deadbeef", &topics).is_empty());
        let fewer = decode(&raw, "5d1c0f3a9b2e4c71", &topics[..1]);
        assert_eq!(fewer.len(), 1);
    }

    #[test]
    fn the_id_stays_small_and_bounded() {
        let now = 1_733_000_000_000;
        let many = |n: usize| -> BTreeMap<String, StreamPosition> {
            topics(n)
                .into_iter()
                .enumerate()
                .map(|(i, t)| (t, at(now - i as u64 * 1_000, i as u64 % 3)))
                .collect()
        };
        let raw = encode("5d1c0f3a9b2e4c71", &many(65));
        assert!(raw.len() < 1_200, "{} characters for 65 topics", raw.len());
        assert_eq!(decode(&raw, "5d1c0f3a9b2e4c71", &topics(65)).len(), 65);
        // Far more than fit: bounded, and what is kept is the newest.
        let raw = encode("5d1c0f3a9b2e4c71", &many(1_000));
        assert!(raw.len() <= MAX_ENCODED, "{}", raw.len());
        let kept = decode(&raw, "5d1c0f3a9b2e4c71", &topics(1_000));
        assert!(kept.len() > 40, "{}", kept.len());
        assert!(kept.contains_key(&topics(1)[0]));
    }

    #[test]
    fn colliding_topics_are_both_unknown() {
        let topics = topics(2);
        let positions: BTreeMap<String, StreamPosition> = [(topics[0].clone(), at(5, 0))].into();
        let raw = encode("ab", &positions);
        let hash = topic_hash(&topics[0]);
        let (_, by_hash) = parse(&raw).unwrap();
        assert_eq!(by_hash.get(&hash), Some(&at(5, 0)));
        // A topic list holding the same name twice stands in for a collision.
        let twice = vec![topics[0].clone(), topics[0].clone()];
        assert!(decode(&raw, "ab", &twice).is_empty());
    }

    #[test]
    fn garbage_never_panics_and_decodes_to_nothing() {
        let topics = topics(2);
        let positions: BTreeMap<String, StreamPosition> = [(topics[0].clone(), at(9, 1))].into();
        let good = URL_SAFE_NO_PAD.decode(encode("ab", &positions)).unwrap();
        for cut in 0..good.len() {
            let raw = URL_SAFE_NO_PAD.encode(&good[..cut]);
            assert!(decode(&raw, "ab", &topics).is_empty(), "cut at {cut}");
        }
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2_000 {
            let len = (seed % 300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode(&URL_SAFE_NO_PAD.encode(&bytes), "ab", &topics);
        }
        for raw in ["", "!!", "AQ", &"A".repeat(MAX_ENCODED + 4)] {
            assert!(decode(raw, "ab", &topics).is_empty(), "{raw:?}");
        }
    }
}
