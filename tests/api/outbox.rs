//! The outbox relay: a change committed in Postgres reaches the streams even
//! when its inline publish never happened, exactly once and in order.

use std::time::Duration;

use axum::http::StatusCode;
use metacast::events::relay::relay_once;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;
use crate::sse;

/// Commits a metadata write the way the write path does (the room's row and
/// its narrow outbox row, in one transaction), backdated, as if the process
/// died right after the commit and never published it.
async fn orphan_event(app: &TestApp, room: &str, n: i64) -> i64 {
    let mut tx = app.state.db.begin().await.unwrap();
    let (seq, version): (i64, i64) = sqlx::query_as(
        "update rooms set metadata = jsonb_build_object('n', $2::bigint), version = version + 1,
                          event_seq = event_seq + 1
         where id = $1 returning event_seq, version",
    )
    .bind(room)
    .bind(n)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let payload = json!({"room": room, "at": "2026-11-22T00:00:00Z", "actor": "ghost", "version": version, "patch": {"n": n}, "strategy": "merge"});
    sqlx::query(
        "insert into outbox (room, seq, event_type, payload, created_at)
         values ($1, $2, 'room.metadata.updated', $3, now() - interval '10 seconds')",
    )
    .bind(room)
    .bind(seq)
    .bind(payload)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    seq
}

async fn unpublished(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

#[sqlx::test]
async fn the_relay_publishes_what_a_crash_left_behind_exactly_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    let token = app.admin();
    app.create_room("lobby", json!({})).await;
    let auth = format!("Bearer {token}");
    let (status, stream) = sse::open(
        &format!("{base}/v1/rooms/lobby/events"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = stream.unwrap();
    stream.expect("sync").await;
    app.outbox_drained().await;

    orphan_event(&app, "lobby", 1).await;
    orphan_event(&app, "lobby", 2).await;
    assert_eq!(relay_once(&app.state).await.unwrap(), 2);
    for n in [1, 2] {
        let frame = stream.expect("room.metadata.updated").await;
        assert_eq!(frame.data["metadata"]["n"], n, "in sequence order");
    }
    assert_eq!(unpublished(&app).await, 0);
    assert_eq!(
        relay_once(&app.state).await.unwrap(),
        0,
        "nothing left to relay"
    );
    stream.assert_quiet(Duration::from_millis(300)).await;

    let relayed = app
        .events("lobby")
        .await
        .into_iter()
        .filter(|(_, data)| data["actor"] == "ghost")
        .count();
    assert_eq!(relayed, 2, "no duplicates in the stream");
}

#[sqlx::test]
async fn inline_publishes_leave_nothing_to_relay(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("lobby", json!({})).await;
    for n in 0..5 {
        app.patch("/v1/rooms/lobby/metadata")
            .bearer(&app.admin())
            .json(&json!({"n": n}))
            .send()
            .await;
    }
    let mut waited = 0;
    while unpublished(&app).await > 0 && waited < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(unpublished(&app).await, 0, "deleted off the request path");
    assert_eq!(app.events("lobby").await.len(), 6);
}

#[sqlx::test]
async fn a_later_write_appends_a_missing_earlier_event_first(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("lobby", json!({})).await;
    orphan_event(&app, "lobby", 1).await;
    // This write's inline publish must not overtake the orphan, nor leave
    // its own event waiting for the relay: it appends the orphan first.
    let response = app
        .patch("/v1/rooms/lobby/metadata")
        .bearer(&app.admin())
        .json(&json!({"n": 2}))
        .send()
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let ns: Vec<_> = app
        .events("lobby")
        .await
        .into_iter()
        .map(|(_, data)| data["metadata"]["n"].clone())
        .collect();
    assert_eq!(ns, [json!(null), json!(1), json!(2)], "in sequence order");

    // Both are deleted (off the request path): nothing to relay.
    let mut waited = 0;
    while unpublished(&app).await > 0 && waited < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(relay_once(&app.state).await.unwrap(), 0);
}

/// The outbox row leaves the document to the room's row and the stream: an
/// event that cannot be rebuilt exactly (here Redis lost the room's stream
/// and the room has moved on) reaches the stream as a gap, so its streams
/// start again from a snapshot instead of missing it.
#[sqlx::test]
async fn an_event_that_cannot_be_rebuilt_is_relayed_as_a_gap(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("lobby", json!({})).await;
    app.outbox_drained().await;
    let mut redis = app.state.redis.clone();
    let keys = &app.state.redis_keys;
    let _: () = redis::cmd("DEL")
        .arg(keys.room_events("lobby"))
        .arg(keys.room_published_seq("lobby"))
        .query_async(&mut redis)
        .await
        .unwrap();

    orphan_event(&app, "lobby", 1).await;
    orphan_event(&app, "lobby", 2).await;
    assert_eq!(relay_once(&app.state).await.unwrap(), 2);
    let events = app.events("lobby").await;
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["gap", "room.metadata.updated"], "{events:?}");
    assert_eq!(events[1].1["metadata"], json!({"n": 2}));
    assert_eq!(unpublished(&app).await, 0);
}
