//! Session transitions fenced by the session they are about: a stale one
//! never ends or opens the wrong session, whatever lands in between, and
//! the reconciler repairs what a crash leaves of Redis and Postgres
//! disagreeing.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

/// The session Redis names for the room, if any.
async fn redis_session(app: &TestApp, room: &str) -> Option<String> {
    let mut redis = app.state.redis.clone();
    redis::cmd("HGET")
        .arg(app.state.redis_keys.room_session(room))
        .arg("id")
        .query_async(&mut redis)
        .await
        .unwrap()
}

async fn open_sessions(app: &TestApp, room: &str) -> Vec<Uuid> {
    sqlx::query_scalar("select id from sessions where room = $1 and ended_at is null")
        .bind(room)
        .fetch_all(&app.state.db)
        .await
        .unwrap()
}

/// Makes the room's Redis session older than the reconciler's start grace.
async fn age_past_start_grace(app: &TestApp, room: &str) {
    let mut redis = app.state.redis.clone();
    redis::cmd("HSET")
        .arg(app.state.redis_keys.room_session(room))
        .arg("started_at")
        .arg(chrono::Utc::now().timestamp_millis() - 60_000)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
}

/// SPEC §4: a room has members exactly when it has one open session, and
/// it is the one Redis names.
async fn assert_consistent(app: &TestApp, room: &str) {
    let open = open_sessions(app, room).await;
    let named = redis_session(app, room).await;
    if app.members(room).await > 0 {
        assert_eq!(
            open.len(),
            1,
            "an occupied room has one open session: {open:?}"
        );
        assert_eq!(
            Some(open[0].to_string()),
            named,
            "and it is the one Redis names"
        );
    } else {
        assert!(
            open.is_empty(),
            "an empty room has no open session: {open:?}"
        );
    }
}

#[sqlx::test]
async fn a_late_start_never_closes_a_newer_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    let a = app.connect(&admin).await;
    let b = app.connect(&admin).await;
    let first = app.join(&admin, "lobby", &a).await.json()["session_id"].clone();
    let first: Uuid = first.as_str().unwrap().parse().unwrap();
    app.delete(&format!("/v1/rooms/lobby/connections/{a}"))
        .bearer(&admin)
        .send()
        .await;
    let second = app.join(&admin, "lobby", &b).await.json()["session_id"].clone();

    // The first session's start, arriving (again) late: a retry, a slow
    // instance, a reconciler that read Redis before the room emptied.
    let room = metacast::ids::RoomId::parse("lobby").unwrap();
    let _ = metacast::presence::sessions::start(
        &app.state,
        &room,
        first,
        chrono::Utc::now(),
        1,
        "late",
    )
    .await;

    let active = app
        .get("/v1/rooms/lobby/session")
        .bearer(&admin)
        .send()
        .await;
    assert_eq!(active.status, StatusCode::OK, "{active:?}");
    assert_eq!(active.json()["id"], second);
    assert_consistent(&app, "lobby").await;
}

#[sqlx::test]
async fn clears_and_deletes_racing_joins_leave_rooms_consistent(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    for round in 0..12 {
        let room = format!("race-{round}");
        let seed = app.connect(&admin).await;
        app.join(&admin, &room, &seed).await;
        let joiners: Vec<String> =
            futures_util::future::join_all((0..4).map(|_| app.connect(&admin))).await;
        let end = if round % 2 == 0 {
            app.post(&format!("/v1/rooms/{room}/clear")).bearer(&admin)
        } else {
            app.delete(&format!("/v1/rooms/{room}")).bearer(&admin)
        };
        let joins =
            futures_util::future::join_all(joiners.iter().map(|id| app.join(&admin, &room, id)));
        let (ended, joined) = tokio::join!(end.send(), joins);
        assert!(ended.status.is_success(), "{ended:?}");
        for answer in &joined {
            assert!(
                answer.status.is_success() || answer.status == StatusCode::NOT_FOUND,
                "{answer:?}"
            );
        }
        assert_consistent(&app, &room).await;
        let live: Option<bool> =
            sqlx::query_scalar("select deleted_at is null from rooms where id = $1")
                .bind(&room)
                .fetch_optional(&app.state.db)
                .await
                .unwrap();
        if live != Some(true) {
            assert_eq!(app.members(&room).await, 0, "nobody in a deleted room");
        }
    }
}

#[sqlx::test]
async fn a_joiner_is_told_only_a_session_it_can_read(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    app.create_room("lobby", json!({})).await;
    // A starter that has set up the session in Redis and not yet recorded
    // it in Postgres (slow, or killed right there).
    let pending = Uuid::now_v7();
    let mut redis = app.state.redis.clone();
    let now_ms = chrono::Utc::now().timestamp_millis();
    redis::cmd("HSET")
        .arg(app.state.redis_keys.room_session("lobby"))
        .arg("id")
        .arg(pending.to_string())
        .arg("started_at")
        .arg(now_ms)
        .arg("peak")
        .arg(1)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();

    let b = app.connect(&admin).await;
    let joined = app.join(&admin, "lobby", &b).await;
    assert_eq!(joined.status, StatusCode::CREATED, "{joined:?}");
    assert_eq!(joined.json()["session_id"], json!(pending.to_string()));
    let active = app
        .get("/v1/rooms/lobby/session")
        .bearer(&admin)
        .send()
        .await;
    assert_eq!(active.status, StatusCode::OK, "{active:?}");
    assert_eq!(active.json()["id"], json!(pending.to_string()));
}

#[sqlx::test]
async fn the_reconciler_evicts_members_of_a_session_postgres_has_ended(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    let a = app.connect(&admin).await;
    let joined = app.join(&admin, "lobby", &a).await;
    let session: Uuid = joined.json()["session_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // What a delete whose instance died before evicting a racing join
    // leaves: the session ended in Postgres, its member still in Redis.
    sqlx::query("update sessions set ended_at = now() where id = $1")
        .bind(session)
        .execute(&app.state.db)
        .await
        .unwrap();
    age_past_start_grace(&app, "lobby").await;

    metacast::presence::sweeper::reconcile(&app.state)
        .await
        .unwrap();

    assert_eq!(app.members("lobby").await, 0);
    assert_eq!(redis_session(&app, "lobby").await, None);
    assert_consistent(&app, "lobby").await;
    let left: Vec<Value> = app
        .events("lobby")
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "presence.left")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["reason"], "evicted");
}

#[sqlx::test]
async fn a_join_whose_index_write_fails_leaves_no_session_the_reconciler_cannot_find(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    let a = app.connect(&admin).await;
    // The reconciler's index refuses every write, as a crash would stop
    // the join right after a Redis step.
    let mut redis = app.state.redis.clone();
    let index = app.state.redis_keys.active_sessions();
    redis::cmd("SET")
        .arg(&index)
        .arg("not a sorted set")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let joined = app.join(&admin, "lobby", &a).await;
    assert!(joined.status.is_server_error(), "{joined:?}");
    redis::cmd("DEL")
        .arg(&index)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    if redis_session(&app, "lobby").await.is_some() {
        age_past_start_grace(&app, "lobby").await;
    }

    metacast::presence::sweeper::reconcile(&app.state)
        .await
        .unwrap();

    assert_consistent(&app, "lobby").await;
    app.delete(&format!("/v1/connections/{a}"))
        .bearer(&admin)
        .send()
        .await;
}
