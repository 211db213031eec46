//! The connection stream's cursor stays small whatever the room ids and
//! the number of rooms, and still resumes every room exactly.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, test_settings};
use crate::sse::{self, SseStream};

/// Common proxies cap a request header at 8 KiB; leave room for the rest.
const MAX_ID: usize = 2048;

async fn open(base: &str, id: &str, token: &str, last: Option<&str>) -> SseStream {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(last) = last {
        headers.push(("last-event-id", last));
    }
    let (status, stream) = sse::open(&format!("{base}/v1/connections/{id}/events"), &headers).await;
    assert_eq!(status, StatusCode::OK);
    stream.unwrap()
}

#[sqlx::test]
async fn a_connection_in_many_long_named_rooms_resumes_with_a_small_id(pool: PgPool) {
    let mut settings = test_settings();
    settings.presence.stream_grace = Duration::from_secs(3600);
    let app = TestApp::with_settings(pool, settings).await;
    let base = app.listen().await;
    let rooms: Vec<String> = (0..64)
        .map(|i| format!("r{i:03}{}", "x".repeat(124)))
        .collect();
    assert!(rooms.iter().all(|room| room.len() == 128));
    let token = app.token_for("alice", &[("r*", &["read", "join"])]);
    let id = app.connect(&token).await;
    for room in &rooms {
        app.create_room(room, json!({ "n": 0 })).await;
        assert!(app.join(&token, room, &id).await.status.is_success());
    }

    let mut stream = open(&base, &id, &token, None).await;
    let sync = stream.expect("sync").await;
    assert_eq!(sync.data["rooms"].as_object().unwrap().len(), 64);
    assert!(sync.id.len() <= MAX_ID, "a {}-character id", sync.id.len());
    drop(stream);

    // Changes in three rooms while away: exactly those come back, no sync.
    for room in &rooms[10..13] {
        app.patch_room(room, json!({ "n": 1 })).await;
    }
    let mut stream = open(&base, &id, &token, Some(&sync.id)).await;
    let mut changed = Vec::new();
    for _ in 0..3 {
        let frame = stream.next().await.expect("a frame");
        assert_eq!(frame.event, "room.metadata.updated", "{frame:?}");
        assert!(frame.id.len() <= MAX_ID);
        changed.push(frame.data["room"].as_str().unwrap().to_owned());
    }
    // Each room in order; rooms among themselves in no particular order.
    changed.sort();
    assert_eq!(changed, rooms[10..13]);
    stream.assert_quiet(Duration::from_millis(300)).await;
    drop(stream);

    // Garbage and over-long ids are no position: a sync, not an error.
    for last in ["garbage", &"A".repeat(20_000)] {
        let mut stream = open(&base, &id, &token, Some(last)).await;
        stream.expect("sync").await;
    }
}
