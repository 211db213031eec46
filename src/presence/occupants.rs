//! Reading a room's occupants as the room's events describe them (their
//! profiles), a page per Redis round trip: what a listing or a snapshot
//! costs grows with what it returns, never with connections it skips.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::connections::millis;
use crate::cache::scripts;
use crate::error::Error;
use crate::state::AppState;

/// Occupants read per round trip when all of them are wanted.
const CHUNK: usize = 500;

/// One occupant of a room.
#[derive(Debug, Clone)]
pub struct Occupant {
    /// The connection id.
    pub id: String,
    pub owner: String,
    pub metadata: Value,
    pub joined_at: DateTime<Utc>,
}

/// One page of a room's occupants.
#[derive(Debug, Default)]
pub struct OccupantPage {
    pub occupants: Vec<Occupant>,
    /// Where the next page starts; `None` when the room has no more.
    pub next: Option<String>,
}

/// The occupants among the next `count` members after id `after`, in id
/// order.
pub async fn page(
    state: &AppState,
    room: &str,
    after: Option<&str>,
    count: usize,
) -> Result<OccupantPage, Error> {
    page_of(state, room, after, count, false).await
}

/// A page, leaving out the occupants whose `presence.joined` is not in the
/// room's stream yet when `announced_only`.
async fn page_of(
    state: &AppState,
    room: &str,
    after: Option<&str>,
    count: usize,
    announced_only: bool,
) -> Result<OccupantPage, Error> {
    let keys = &state.redis_keys;
    let mut redis = state.redis.clone();
    let reply: Vec<String> = scripts::OCCUPANTS_PAGE
        .key(keys.room_occupants(room))
        .key(keys.room_members(room))
        .key(keys.room_profiles(room))
        .arg(after.unwrap_or_default())
        .arg(count)
        .arg(if announced_only { "1" } else { "0" })
        .invoke_async(&mut redis)
        .await?;
    let [scanned, last, flat @ ..] = &reply[..] else {
        return Err(anyhow::anyhow!("short OCCUPANTS_PAGE answer").into());
    };
    let scanned: usize = scanned
        .parse()
        .map_err(|_| anyhow::anyhow!("bad OCCUPANTS_PAGE count {scanned:?}"))?;
    let occupants = flat
        .chunks_exact(4)
        .map(|fields| {
            let [id, joined_at, owner, metadata] = fields else {
                unreachable!("chunks of four");
            };
            let corrupt = || anyhow::anyhow!("malformed profile of occupant {id} in {room}");
            Ok(Occupant {
                id: id.clone(),
                owner: serde_json::from_str(owner).map_err(|_| corrupt())?,
                metadata: serde_json::from_str(metadata).map_err(|_| corrupt())?,
                joined_at: millis(joined_at.parse().map_err(|_| corrupt())?),
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(OccupantPage {
        occupants,
        // Fewer ids than asked for: the room has none after them.
        next: (scanned == count && count > 0).then(|| last.clone()),
    })
}

/// Every occupant the room's stream has announced, in id order (for a
/// room's snapshot).
pub async fn all(state: &AppState, room: &str) -> Result<Vec<Occupant>, Error> {
    let mut occupants = Vec::new();
    let mut after = None;
    loop {
        let chunk = page_of(state, room, after.as_deref(), CHUNK, true).await?;
        occupants.extend(chunk.occupants);
        match chunk.next {
            Some(next) => after = Some(next),
            None => return Ok(occupants),
        }
    }
}
