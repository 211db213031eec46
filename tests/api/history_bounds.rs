//! A room's history in Redis is bounded by age as well as by count, and
//! goes away once the room has been idle for the retention: no client can
//! make Redis keep events nobody may resume from any more.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, test_settings};

async fn redis_int(app: &TestApp, command: &str, key: String) -> i64 {
    let mut redis = app.state.redis.clone();
    redis::cmd(command)
        .arg(key)
        .query_async(&mut redis)
        .await
        .unwrap()
}

/// Seen failing before: the stream kept every event up to its count, however
/// old, and never expired.
#[sqlx::test]
async fn a_rooms_history_is_trimmed_by_age_and_expires_when_idle(pool: PgPool) {
    let mut settings = test_settings();
    settings.presence.event_retention = Duration::from_millis(1500);
    let app = TestApp::with_settings(pool, settings).await;
    let admin = app.admin();
    let events = app.state.redis_keys.room_events("aging");

    app.create_room("aging", json!({"n": 0})).await;
    for n in 1..=3 {
        let patched = app
            .patch("/v1/rooms/aging/metadata")
            .bearer(&admin)
            .json(&json!({"n": n}))
            .send()
            .await;
        assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    }
    let before = redis_int(&app, "XLEN", events.clone()).await;
    assert!(before >= 4, "{before}");
    let ttl = redis_int(&app, "PTTL", events.clone()).await;
    assert!(ttl > 0 && ttl <= 1500, "an idle history expires: {ttl}");

    tokio::time::sleep(Duration::from_millis(1700)).await;
    let patched = app
        .patch("/v1/rooms/aging/metadata")
        .bearer(&admin)
        .json(&json!({"n": 4}))
        .send()
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    assert_eq!(
        redis_int(&app, "XLEN", events.clone()).await,
        1,
        "only the event younger than the retention stays"
    );
    // The sequence of a live room never expires: the next event must find it.
    assert_eq!(
        redis_int(
            &app,
            "PTTL",
            app.state.redis_keys.room_published_seq("aging")
        )
        .await,
        -1
    );
}
