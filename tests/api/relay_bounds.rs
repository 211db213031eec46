//! An event path no payload can poison: the relay passes payloads on as
//! text, relays each room from its lowest unpublished row, sets aside what
//! Redis refuses (its streams resync), and an event is never larger than a
//! document may be.

use axum::http::StatusCode;
use metacast::events::relay::relay_once;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;

/// An unpublished outbox row of `room` at `seq`, `age_secs` old: an event
/// of type `kind` carrying `payload` as text (Postgres keeps the JSON as it
/// is given).
async fn unpublished_row(
    app: &TestApp,
    (room, seq, age_secs): (&str, i64, i64),
    kind: &str,
    payload: &str,
) {
    sqlx::query(
        "insert into outbox (room, seq, event_type, payload, created_at)
         values ($1, $2, $3, $4::jsonb, now() - make_interval(secs => $5))",
    )
    .bind(room)
    .bind(seq)
    .bind(kind)
    .bind(payload)
    .bind(age_secs as f64)
    .execute(&app.state.db)
    .await
    .unwrap();
}

/// An event that carries everything it says (no document to put back).
const RESET: &str = "room.metadata.deleted";

fn payload(room: &str, n: i64) -> String {
    json!({"room": room, "actor": "ghost", "version": n}).to_string()
}

/// Seen failing before: decoding the deep row failed every relay round, for
/// every room, so the other room's event never arrived.
#[sqlx::test]
async fn a_payload_too_deep_to_decode_stalls_no_room(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("abyss", json!({})).await;
    app.outbox_drained().await;
    // As the write path leaves it: the document comes back from the room.
    let deep = format!(
        r#"{{"room":"abyss","version":1,"patch":{}0{}}}"#,
        "[".repeat(140),
        "]".repeat(140)
    );
    let updated = "room.metadata.updated";
    unpublished_row(&app, ("abyss", 2, 10), updated, &deep).await;
    unpublished_row(&app, ("plain", 1, 10), RESET, &payload("plain", 1)).await;

    assert_eq!(relay_once(&app.state).await.unwrap(), 2);
    let plain = app.events("plain").await;
    assert_eq!(plain.len(), 1, "{plain:?}");
    let mut redis = app.state.redis.clone();
    let held: usize = redis::cmd("XLEN")
        .arg(app.state.redis_keys.room_events("abyss"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(held, 2, "the deep event is passed on as it is");
}

/// Seen failing before: a transaction that started earlier committed the
/// later sequence number; the relay took that row alone (it was old
/// enough), and its predecessor was then "already there" and never sent.
#[sqlx::test]
async fn rows_committed_out_of_start_order_reach_the_stream_in_sequence_order(pool: PgPool) {
    let app = TestApp::new(pool).await;
    unpublished_row(&app, ("race", 1, 0), RESET, &payload("race", 1)).await;
    unpublished_row(&app, ("race", 2, 10), RESET, &payload("race", 2)).await;

    assert_eq!(relay_once(&app.state).await.unwrap(), 2);
    let versions: Vec<i64> = app
        .events("race")
        .await
        .iter()
        .map(|(_, data)| data["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
}

/// Rows Redis refuses to append are set aside, once, and hold up no room.
#[sqlx::test]
async fn rows_redis_refuses_are_set_aside(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut redis = app.state.redis.clone();
    // Not a stream: every append to it fails with WRONGTYPE.
    let _: () = redis::cmd("SET")
        .arg(app.state.redis_keys.room_events("broken"))
        .arg("x")
        .query_async(&mut redis)
        .await
        .unwrap();
    unpublished_row(&app, ("broken", 1, 10), RESET, &payload("broken", 1)).await;
    unpublished_row(&app, ("plain", 1, 10), RESET, &payload("plain", 1)).await;

    assert_eq!(relay_once(&app.state).await.unwrap(), 2);
    assert_eq!(app.events("plain").await.len(), 1);
    let set_aside: Vec<(String, i64, String)> =
        sqlx::query_as("select room, seq, error from outbox_quarantine")
            .fetch_all(&app.state.db)
            .await
            .unwrap();
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    assert_eq!((set_aside[0].0.as_str(), set_aside[0].1), ("broken", 1));
    assert!(set_aside[0].2.contains("WRONGTYPE"), "{set_aside:?}");
    assert_eq!(
        relay_once(&app.state).await.unwrap(),
        0,
        "never tried again"
    );
}

async fn last_event(app: &TestApp, room: &str) -> Value {
    app.events(room).await.pop().expect("an event").1
}

/// Seen failing before: the event carried the patch as sent, ~500 KiB,
/// for a write that stored `{}`.
#[sqlx::test]
async fn a_patch_larger_than_a_document_leaves_the_event_bounded(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    app.create_room("vast", json!({})).await;
    let big = "x".repeat(500 * 1024);
    let patch =
        json!([{"op": "add", "path": "/big", "value": big}, {"op": "remove", "path": "/big"}]);
    let written = app
        .patch("/v1/rooms/vast/metadata")
        .bearer(&admin)
        .body("application/json-patch+json", patch.to_string())
        .send()
        .await;
    assert_eq!(written.status, StatusCode::OK, "{written:?}");

    let event = last_event(&app, "vast").await;
    assert_eq!(event["patch"], Value::Null, "{event}");
    assert_eq!(event["patch_omitted"], true);
    assert_eq!(event["metadata"], json!({}));
    let limit = app.state.settings.limits.max_bytes;
    assert!(
        event.to_string().len() < limit,
        "{} bytes",
        event.to_string().len()
    );
}

/// A patch that builds and removes a value deeper than a document may be
/// leaves its event decodable by any client; a small patch travels whole.
#[sqlx::test]
async fn only_patches_a_document_could_hold_travel_in_events(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    app.create_room("deep", json!({})).await;
    let mut value = json!(0);
    for _ in 0..100 {
        value = json!([value]);
    }
    let patch =
        json!([{"op": "add", "path": "/d", "value": value}, {"op": "remove", "path": "/d"}]);
    let written = app
        .patch("/v1/rooms/deep/metadata")
        .bearer(&admin)
        .body("application/json-patch+json", patch.to_string())
        .send()
        .await;
    assert_eq!(written.status, StatusCode::OK, "{written:?}");
    assert_eq!(last_event(&app, "deep").await["patch_omitted"], true);

    app.patch_room("deep", json!({"small": 1})).await;
    let event = last_event(&app, "deep").await;
    assert_eq!(event["patch"], json!({"small": 1}));
    assert!(event.get("patch_omitted").is_none(), "{event}");
}
