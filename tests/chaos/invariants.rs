//! What must hold once the clients stop, read straight from Postgres and
//! Redis and through the API: occupancy and sessions agree, every member is
//! a live connection with a deadline, every stream's fold is the room's
//! state, and nothing is left behind once everything has ended.

use std::collections::BTreeSet;

use metacast::state::AppState;
use serde_json::Value;

use crate::client::Api;
use crate::fold::Fold;
use crate::world::World;

async fn redis<T: redis::FromRedisValue>(state: &AppState, command: &mut redis::Cmd) -> T {
    let mut connection = state.redis.clone();
    command
        .query_async(&mut connection)
        .await
        .expect("Redis answers")
}

async fn open_sessions(state: &AppState, room: &str) -> Vec<String> {
    sqlx::query_scalar("select id::text from sessions where room = $1 and ended_at is null")
        .bind(room)
        .fetch_all(&state.db)
        .await
        .expect("Postgres answers")
}

/// The connections in the index.
pub async fn indexed_connections(state: &AppState) -> Vec<String> {
    redis(
        state,
        redis::cmd("ZRANGE")
            .arg(state.redis_keys.all_connections())
            .arg(0)
            .arg(-1),
    )
    .await
}

/// Every connection in the index has its record and a deadline (read while
/// every lease is kept alive, so none ends in between).
pub async fn connections(world: &World, state: &AppState) {
    let keys = &state.redis_keys;
    for id in &indexed_connections(state).await {
        let deadline: Option<f64> =
            redis(state, redis::cmd("ZSCORE").arg(keys.deadlines()).arg(id)).await;
        let exists: bool = redis(state, redis::cmd("EXISTS").arg(keys.connection(id))).await;
        if deadline.is_none() || !exists {
            world.violation(format!(
                "connection {id}: deadline {deadline:?}, record exists {exists}"
            ));
        }
    }
}

/// A room has members ⇔ exactly one open session in Postgres, the one
/// Redis names; each member is a live connection that lists the room.
pub async fn occupancy(world: &World, state: &AppState, room: &str) {
    let keys = &state.redis_keys;
    let members: Vec<String> = redis(state, redis::cmd("HKEYS").arg(keys.room_members(room))).await;
    let named: Option<String> = redis(
        state,
        redis::cmd("HGET").arg(keys.room_session(room)).arg("id"),
    )
    .await;
    let open = open_sessions(state, room).await;
    let agrees = if members.is_empty() {
        open.is_empty() && named.is_none()
    } else {
        open.len() == 1 && named.as_deref() == Some(open[0].as_str())
    };
    if !agrees {
        world.violation(format!(
            "{room}: members {members:?}, Redis session {named:?}, open in Postgres {open:?}"
        ));
    }
    for id in &members {
        let deadline: Option<f64> =
            redis(state, redis::cmd("ZSCORE").arg(keys.deadlines()).arg(id)).await;
        let listed: bool = redis(
            state,
            redis::cmd("HEXISTS")
                .arg(keys.connection_rooms(id))
                .arg(room),
        )
        .await;
        if deadline.is_none() || !listed {
            world.violation(format!(
                "{room}: member {id} has deadline {deadline:?}, lists the room {listed}"
            ));
        }
    }
}

/// The room as the API tells it, in the fold's terms.
async fn current(
    api: &Api,
    room: &str,
) -> (
    Option<Value>,
    Option<i64>,
    Option<(String, i64, Value)>,
    BTreeSet<String>,
) {
    let metadata = api.get(&format!("/v1/rooms/{room}/metadata")).await;
    let (document, version) = if metadata.status.is_success() {
        (Some(metadata.json()), Some(metadata.version()))
    } else {
        (None, None)
    };
    let session = api.get(&format!("/v1/rooms/{room}/session")).await;
    let session = session.status.is_success().then(|| {
        let body = session.json();
        (
            body["id"].as_str().unwrap_or_default().to_owned(),
            body["version"].as_i64().unwrap_or(-1),
            body["metadata"].clone(),
        )
    });
    let listed = api
        .get(&format!("/v1/rooms/{room}/connections?limit=100"))
        .await;
    let occupants = if listed.status.is_success() {
        listed.json()["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| o["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    } else {
        BTreeSet::new()
    };
    (document, version, session, occupants)
}

/// The observer's fold says what the API says.
pub async fn fold_matches(world: &World, api: &Api, fold: &Fold) {
    let room = fold.room.clone();
    let (metadata, version, session, occupants) = current(api, &room).await;
    if !fold.synced {
        // Between a deletion's end of its stream and the next sync.
        if metadata.is_some() {
            world.violation(format!("{room}: the observer never got a sync"));
        }
        return;
    }
    let folded_session = fold
        .session
        .as_ref()
        .map(|s| (s.id.clone(), s.version, s.metadata.clone()));
    let folded_occupants: BTreeSet<String> = fold.occupants.keys().cloned().collect();
    if fold.metadata != metadata || fold.version != version {
        world.violation(format!(
            "{room}: stream folds to version {:?} {:?}, the API says {version:?} {metadata:?}",
            fold.version, fold.metadata
        ));
    }
    if folded_session != session {
        world.violation(format!(
            "{room}: stream folds to session {folded_session:?}, the API says {session:?}"
        ));
    }
    if folded_occupants != occupants {
        world.violation(format!(
            "{room}: stream folds to occupants {folded_occupants:?}, the API says {occupants:?}"
        ));
    }
}

/// Once every connection has ended: no member, no open session anywhere.
pub async fn all_ended(world: &World, state: &AppState, rooms: &[String]) {
    let open: i64 = sqlx::query_scalar("select count(*) from sessions where ended_at is null")
        .fetch_one(&state.db)
        .await
        .expect("Postgres answers");
    let indexed: i64 = redis(
        state,
        redis::cmd("ZCARD").arg(state.redis_keys.active_sessions()),
    )
    .await;
    if open != 0 || indexed != 0 {
        world.violation(format!("all connections ended, yet {open} sessions are open in Postgres and {indexed} indexed in Redis"));
    }
    for room in rooms {
        occupancy(world, state, room).await;
    }
}

/// Once every room is deleted too: the outbox is relayed and every Redis
/// key left either expires or is the dataset's epoch.
pub async fn nothing_left(world: &World, state: &AppState) {
    let unpublished: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&state.db)
        .await
        .expect("Postgres answers");
    if unpublished != 0 {
        world.violation(format!("{unpublished} outbox rows never published"));
    }
    let keys: Vec<String> = redis(state, redis::cmd("KEYS").arg("*")).await;
    let epoch = state.redis_keys.epoch();
    for key in keys.into_iter().filter(|key| *key != epoch) {
        let ttl: i64 = redis(state, redis::cmd("PTTL").arg(&key)).await;
        if ttl < 0 {
            world.violation(format!("Redis key {key} is left behind with no expiry"));
        }
    }
}
