//! Lifecycle transitions under the interleavings a hostile client or a
//! broken room can produce (issue 13: the defects found, one test each).

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test]
async fn an_admin_removing_someone_elses_connection_evicts_it(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join", "read"])]);
    let mine = app.connect(&alice).await;
    let theirs = app.connect(&alice).await;
    for id in [&mine, &theirs] {
        assert!(app.join(&alice, "lobby", id).await.status.is_success());
    }
    let removed = app
        .delete(&format!("/v1/rooms/lobby/connections/{theirs}"))
        .bearer(&app.admin())
        .send()
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{removed:?}");
    let left = app
        .delete(&format!("/v1/rooms/lobby/connections/{mine}"))
        .bearer(&alice)
        .send()
        .await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{left:?}");
    let reasons: Vec<(String, String)> = app
        .events("lobby")
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "presence.left")
        .map(|(_, data)| {
            (
                data["connection_id"].as_str().unwrap().to_owned(),
                data["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [(theirs, "evicted".to_owned()), (mine, "left".to_owned())]
    );
}

#[sqlx::test]
async fn one_broken_room_does_not_stop_the_reconciler(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    let a = app.connect(&admin).await;
    app.create_room("hall", json!({})).await;
    let mut redis = app.state.redis.clone();
    let keys = &app.state.redis_keys;
    // A room whose Redis session cannot be read (a start time that is not a
    // number), first in the index; then a session whose starter died before
    // Postgres recorded it.
    let orphan = uuid::Uuid::now_v7();
    let unreadable = uuid::Uuid::now_v7();
    for (room, id, started_at, score) in [
        ("broken", unreadable, "not-a-time", 0),
        ("hall", orphan, "1", 1),
    ] {
        let _: () = redis::pipe()
            .hset(keys.room_members(room), &a, 1)
            .hset_multiple(
                keys.room_session(room),
                &[
                    ("id", id.to_string()),
                    ("started_at", started_at.into()),
                    ("peak", "1".into()),
                ],
            )
            .query_async(&mut redis)
            .await
            .unwrap();
        let _: () = redis::cmd("ZADD")
            .arg(keys.active_sessions())
            .arg(score)
            .arg(room)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let _ = metacast::presence::sweeper::reconcile(&app.state).await;
    let open: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("select id, room from sessions where ended_at is null")
            .fetch_all(&app.state.db)
            .await
            .unwrap();
    assert_eq!(
        open,
        [(orphan, "hall".to_owned())],
        "the room after it was repaired"
    );
}

#[sqlx::test]
async fn a_stream_keeps_a_long_lived_connection_alive(pool: PgPool) {
    let mut settings = crate::helpers::test_settings();
    settings.presence.sweep_interval = std::time::Duration::from_millis(100);
    let app = TestApp::with_settings(pool, settings).await;
    let base = app.listen().await;
    let alice = app.token_for("alice", &[("lobby", &["join", "read"])]);
    let created = app
        .post("/v1/connections")
        .bearer(&alice)
        .json(&json!({ "ttl_seconds": 1 }))
        .send()
        .await;
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert!(app.join(&alice, "lobby", &id).await.status.is_success());
    // Older than a few leases, as any connection that reconnects its
    // EventSource after a while.
    for _ in 0..14 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let beat = app
            .post(&format!("/v1/connections/{id}/heartbeat"))
            .bearer(&alice)
            .send()
            .await;
        assert_eq!(beat.status, StatusCode::NO_CONTENT, "{beat:?}");
    }
    let auth = format!("Bearer {alice}");
    let (status, stream) = crate::sse::open(
        &format!("{base}/v1/connections/{id}/events"),
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = stream.unwrap();
    stream.expect("sync").await;
    // Only the stream renews the lease now.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let seen = app
        .get(&format!("/v1/connections/{id}"))
        .bearer(&alice)
        .send()
        .await;
    assert_eq!(
        seen.status,
        StatusCode::OK,
        "the lease ran out under an open stream"
    );
    assert_eq!(seen.json()["rooms"], json!(["lobby"]));
    stream
        .assert_quiet(std::time::Duration::from_millis(200))
        .await;
}
