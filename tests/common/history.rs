//! A room's event history as recorded in Redis, for the test binaries.

use metacast::state::AppState;
use serde_json::Value;

/// The events recorded in the room's Redis stream: `(type, data)`, oldest first.
pub async fn room_history(state: &AppState, room: &str) -> Vec<(String, Value)> {
    let mut redis = state.redis.clone();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(state.redis_keys.room_events(room))
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .expect("XRANGE");
    entries
        .ids
        .iter()
        .map(|entry| {
            let kind: String = entry.get("type").expect("type");
            let data: String = entry.get("data").expect("data");
            (kind, serde_json::from_str(&data).expect("JSON data"))
        })
        .collect()
}
