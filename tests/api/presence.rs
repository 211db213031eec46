//! Presence and sessions: joins and leaves decide first-in/last-out exactly
//! once, across instances, with the events recorded in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures_util::future::join_all;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::helpers::{TestApp, test_settings};

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(kind, _)| kind.as_str()).collect()
}

async fn session_rows(app: &TestApp, room: &str) -> Vec<(uuid::Uuid, bool, i32)> {
    sqlx::query_as("select id, ended_at is null, peak_occupancy from sessions where room = $1 order by started_at")
        .bind(room)
        .fetch_all(&app.state.db)
        .await
        .unwrap()
}

#[sqlx::test]
async fn first_join_starts_a_session_and_last_leave_ends_it(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join", "read"])]);
    let bob = app.token_for("bob", &[("lobby", &["join", "read"])]);
    let a = app.connect(&alice).await;
    let b = app.connect(&bob).await;

    let first = app.join(&alice, "lobby", &a).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let session_id = first.json()["session_id"].as_str().unwrap().to_owned();
    assert_eq!(first.json()["occupancy"], 1);

    // The room was created by the join: {} at version 0.
    let room = app.get("/v1/rooms/lobby").bearer(&alice).send().await;
    assert_eq!(room.status, StatusCode::OK, "{room:?}");
    assert_eq!(room.json()["metadata"], json!({}));
    assert_eq!(room.json()["version"], 0);
    assert_eq!(room.json()["session"]["id"], session_id.as_str());

    let second = app.join(&bob, "lobby", &b).await;
    assert_eq!(
        second.json()["session_id"],
        session_id.as_str(),
        "same session"
    );
    assert_eq!(second.json()["occupancy"], 2);
    let again = app.join(&bob, "lobby", &b).await;
    assert_eq!(again.status, StatusCode::OK, "joining twice is idempotent");
    assert_eq!(again.json()["occupancy"], 2);

    let session = app
        .get("/v1/rooms/lobby/session")
        .bearer(&alice)
        .send()
        .await;
    assert_eq!(session.json()["occupancy"], 2);
    assert_eq!(session.json()["metadata"], json!({}));
    assert_eq!(session.version(), 0);

    let occupants = app
        .get("/v1/rooms/lobby/connections")
        .bearer(&alice)
        .send()
        .await
        .json();
    let mut ids: Vec<&str> = occupants["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![a.as_str(), b.as_str()];
    expected.sort();
    assert_eq!(ids, expected);

    let left = app
        .delete(&format!("/v1/rooms/lobby/connections/{a}"))
        .bearer(&alice)
        .send()
        .await;
    assert_eq!(left.status, StatusCode::NO_CONTENT);
    assert_eq!(
        session_rows(&app, "lobby").await,
        vec![(session_id.parse().unwrap(), true, 0)]
    );
    app.delete(&format!("/v1/rooms/lobby/connections/{a}"))
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-in-room");

    app.delete(&format!("/v1/rooms/lobby/connections/{b}"))
        .bearer(&bob)
        .send()
        .await;
    let rows = session_rows(&app, "lobby").await;
    assert_eq!(
        rows,
        vec![(session_id.parse().unwrap(), false, 2)],
        "ended, with its peak"
    );
    app.get("/v1/rooms/lobby/session")
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no-active-session");

    assert_eq!(
        kinds(&app.events("lobby").await),
        [
            "session.started",
            "presence.joined",
            "presence.joined",
            "presence.left",
            "presence.left",
            "session.ended"
        ]
    );
}

#[sqlx::test]
async fn event_payloads_follow_the_spec(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join", "read"])]);
    let response = app
        .post("/v1/connections")
        .bearer(&alice)
        .json(&json!({"metadata": {"name": "Alice"}}))
        .send()
        .await;
    let a = response.json()["id"].as_str().unwrap().to_owned();
    let session_id = app.join(&alice, "lobby", &a).await.json()["session_id"].clone();
    app.delete(&format!("/v1/connections/{a}"))
        .bearer(&alice)
        .send()
        .await;

    let events = app.events("lobby").await;
    let [(_, started), (_, joined), (_, left), (_, ended)] = &events[..] else {
        panic!("four events expected: {events:?}");
    };
    for (_, data) in &events {
        assert_eq!(data["room"], "lobby");
        assert!(data["at"].is_string());
    }
    assert_eq!(started["session_id"], session_id);
    assert_eq!(started["occupancy"], 1);
    assert_eq!(started["actor"], "alice");
    assert_eq!(joined["connection_id"], a.as_str());
    assert_eq!(joined["owner"], "alice");
    assert_eq!(joined["metadata"], json!({"name": "Alice"}));
    assert_eq!(joined["occupancy"], 1);
    assert_eq!(left["reason"], "disconnected");
    assert_eq!(left["occupancy"], 0);
    assert_eq!(ended["session_id"], session_id);
    assert_eq!(ended["peak_occupancy"], 1);
    assert_eq!(ended["final_metadata"], json!({}));
    assert!(ended["ended_at"].is_string());
}

#[sqlx::test]
async fn concurrent_joins_and_leaves_on_two_instances_are_exactly_once(pool: PgPool) {
    let one = TestApp::new(pool).await;
    let two = one.another_instance().await;
    let admin = one.admin();
    const N: usize = 24;
    let mut ids = Vec::new();
    for _ in 0..N {
        ids.push(one.connect(&admin).await);
    }
    for round in 0..3 {
        let joins = ids.iter().enumerate().map(|(i, id)| {
            let app = if i % 2 == 0 { &one } else { &two };
            app.join(&admin, "arena", id)
        });
        for response in join_all(joins).await {
            assert_eq!(response.status, StatusCode::CREATED, "{response:?}");
        }
        let room = two
            .get("/v1/rooms/arena")
            .bearer(&admin)
            .send()
            .await
            .json();
        assert_eq!(room["occupancy"], N, "round {round}");

        let leaves = ids.iter().enumerate().map(|(i, id)| {
            let app = if i % 2 == 0 { &two } else { &one };
            app.delete(&format!("/v1/rooms/arena/connections/{id}"))
                .bearer(&admin)
                .send()
        });
        for response in join_all(leaves).await {
            assert_eq!(response.status, StatusCode::NO_CONTENT, "{response:?}");
        }
    }
    let rows = session_rows(&one, "arena").await;
    assert_eq!(rows.len(), 3, "one session per round: {rows:?}");
    assert!(
        rows.iter()
            .all(|(_, open, peak)| !open && *peak == N as i32),
        "{rows:?}"
    );
    let events = one.events("arena").await;
    let count = |kind: &str| events.iter().filter(|(k, _)| k == kind).count();
    assert_eq!(count("session.started"), 3);
    assert_eq!(count("session.ended"), 3);
    assert_eq!(count("presence.joined"), 3 * N);
    assert_eq!(count("presence.left"), 3 * N);
}

#[sqlx::test]
async fn an_expired_lease_leaves_every_room_and_ends_sessions(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    let short = app
        .post("/v1/connections")
        .bearer(&admin)
        .json(&json!({"ttl_seconds": 1}))
        .send()
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let steady = app
        .post("/v1/connections")
        .bearer(&admin)
        .json(&json!({"ttl_seconds": 2}))
        .send()
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.join(&admin, "one", &short).await;
    app.join(&admin, "two", &short).await;
    app.join(&admin, "two", &steady).await;

    // Past the short lease; the steady one's 2 s lease leaves a wide margin
    // between heartbeats on a busy machine.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let beat = app
            .post(&format!("/v1/connections/{steady}/heartbeat"))
            .bearer(&admin)
            .send()
            .await;
        assert_eq!(beat.status, StatusCode::NO_CONTENT);
    }
    metacast::presence::sweeper::sweep(&app.state)
        .await
        .unwrap();

    app.get(&format!("/v1/connections/{short}"))
        .bearer(&admin)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    app.post(&format!("/v1/connections/{short}/heartbeat"))
        .bearer(&admin)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    assert_eq!(
        app.get("/v1/rooms/one").bearer(&admin).send().await.json()["occupancy"],
        0
    );
    assert_eq!(
        app.get("/v1/rooms/two").bearer(&admin).send().await.json()["occupancy"],
        1
    );
    assert!(
        !session_rows(&app, "one").await[0].1,
        "the session of room one ended"
    );
    assert!(
        session_rows(&app, "two").await[0].1,
        "room two still has someone"
    );

    let left: Vec<Value> = app
        .events("two")
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "presence.left")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(left.len(), 1, "left exactly once");
    assert_eq!(left[0]["reason"], "expired");
    assert_eq!(left[0]["actor"], "system");
}

#[sqlx::test]
async fn a_dropped_instance_is_swept_by_the_survivor(pool: PgPool) {
    let mut settings = test_settings();
    settings.presence.sweep_interval = Duration::from_millis(100);
    let survivor = TestApp::with_settings(pool, settings).await;
    let doomed = survivor.another_instance().await;
    let admin = survivor.admin();
    let id = doomed
        .post("/v1/connections")
        .bearer(&admin)
        .json(&json!({"ttl_seconds": 1}))
        .send()
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    doomed.join(&admin, "lobby", &id).await;
    drop(doomed);

    metacast::presence::sweeper::spawn(survivor.state.clone());
    let mut ended = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if session_rows(&survivor, "lobby")
            .await
            .iter()
            .all(|(_, open, _)| !open)
        {
            ended = true;
            break;
        }
    }
    survivor.state.lifecycle.stop();
    assert!(
        ended,
        "the survivor's sweeper ended the session within lease + sweep"
    );
    let room = survivor
        .get("/v1/rooms/lobby")
        .bearer(&admin)
        .send()
        .await
        .json();
    assert_eq!(room["occupancy"], 0);
    assert_eq!(room["session"], Value::Null);
}

#[sqlx::test]
async fn clear_evicts_and_keeps_metadata_while_delete_removes_the_room(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    let moderator = app.token_for("mod", &[("lobby", &["moderate"]), ("hall", &["moderate"])]);
    app.create_room("lobby", json!({"topic": "x"})).await;
    app.create_room("hall", json!({})).await;
    let a = app.connect(&admin).await;
    let b = app.connect(&admin).await;
    for room in ["lobby", "hall"] {
        app.join(&admin, room, &a).await;
        app.join(&admin, room, &b).await;
    }

    let cleared = app
        .post("/v1/rooms/lobby/clear")
        .bearer(&moderator)
        .send()
        .await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT, "{cleared:?}");
    let room = app
        .get("/v1/rooms/lobby")
        .bearer(&admin)
        .send()
        .await
        .json();
    assert_eq!(
        (room["occupancy"].clone(), room["session"].clone()),
        (json!(0), Value::Null)
    );
    assert_eq!(room["metadata"], json!({"topic": "x"}), "metadata stays");
    let connection = app
        .get(&format!("/v1/connections/{a}"))
        .bearer(&admin)
        .send()
        .await
        .json();
    assert_eq!(
        connection["rooms"],
        json!(["hall"]),
        "evicted from lobby only"
    );
    let events = app.events("lobby").await;
    let tail: Vec<&str> = kinds(&events)[events.len() - 4..].to_vec();
    assert_eq!(
        tail,
        [
            "presence.left",
            "presence.left",
            "session.ended",
            "room.cleared"
        ]
    );
    assert!(
        events
            .iter()
            .filter(|(k, _)| k == "presence.left")
            .all(|(_, d)| d["reason"] == "evicted")
    );

    let delete = app.delete("/v1/rooms/hall").bearer(&moderator).send().await;
    delete.assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let deleted = app.delete("/v1/rooms/hall").bearer(&admin).send().await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    app.get("/v1/rooms/hall")
        .bearer(&admin)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");
    let connection = app
        .get(&format!("/v1/connections/{b}"))
        .bearer(&admin)
        .send()
        .await
        .json();
    assert_eq!(connection["rooms"], json!([]));
    let events = app.events("hall").await;
    assert_eq!(kinds(&events).last(), Some(&"room.deleted"));
    let history = app
        .get("/v1/rooms/hall/sessions")
        .bearer(&admin)
        .send()
        .await
        .json();
    assert_eq!(
        history["items"].as_array().unwrap().len(),
        1,
        "history outlives the room"
    );
    assert!(history["items"][0]["ended_at"].is_string());
}

#[sqlx::test]
async fn session_metadata_lives_and_dies_with_the_session(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join", "read", "write_session"])]);
    let reader = app.token_for("reader", &[("lobby", &["read"])]);
    let a = app.connect(&alice).await;
    let meta = "/v1/rooms/lobby/session/metadata";

    app.put(meta)
        .bearer(&alice)
        .json(&json!({"x": 1}))
        .send()
        .await
        .assert_problem(StatusCode::CONFLICT, "no-active-session");
    app.get(meta)
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no-active-session");

    let first = app.join(&alice, "lobby", &a).await.json()["session_id"].clone();
    let put = app
        .put(meta)
        .bearer(&alice)
        .json(&json!({"recording": true}))
        .send()
        .await;
    assert_eq!((put.status, put.version()), (StatusCode::OK, 1));
    let patched = app
        .patch(meta)
        .bearer(&alice)
        .if_match(1)
        .body("application/merge-patch+json", r#"{"topic":"retro"}"#)
        .send()
        .await;
    assert_eq!(patched.version(), 2);
    assert_eq!(patched.json(), json!({"recording": true, "topic": "retro"}));
    app.patch(meta)
        .bearer(&alice)
        .if_match(1)
        .json(&json!({"late": true}))
        .send()
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED, "version-mismatch");
    app.put(meta)
        .bearer(&reader)
        .json(&json!({}))
        .send()
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.get(meta).bearer(&reader).send().await.version(), 2);

    app.delete(&format!("/v1/rooms/lobby/connections/{a}"))
        .bearer(&alice)
        .send()
        .await;
    let second = app.join(&alice, "lobby", &a).await.json()["session_id"].clone();
    assert_ne!(first, second, "a new session");
    let fresh = app.get(meta).bearer(&alice).send().await;
    assert_eq!(
        (fresh.json(), fresh.version()),
        (json!({}), 0),
        "cleared for the new session"
    );

    let history = app
        .get("/v1/rooms/lobby/sessions")
        .bearer(&reader)
        .send()
        .await
        .json();
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], second, "newest first");
    assert_eq!(items[0]["ended_at"], Value::Null);
    assert_eq!(items[1]["id"], first);
    assert_eq!(
        items[1]["final_metadata"],
        json!({"recording": true, "topic": "retro"})
    );

    let one = app
        .get(&format!("/v1/sessions/{}", first.as_str().unwrap()))
        .bearer(&reader)
        .send()
        .await;
    assert_eq!(
        one.json()["final_metadata"],
        json!({"recording": true, "topic": "retro"})
    );
    let stranger = app.token_for("eve", &[("other", &["read"])]);
    app.get(&format!("/v1/sessions/{}", first.as_str().unwrap()))
        .bearer(&stranger)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "session-not-found");
    app.get("/v1/sessions/not-a-uuid")
        .bearer(&reader)
        .send()
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-session-id");

    let updates = app
        .events("lobby")
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "session.metadata.updated")
        .map(|(_, data)| data)
        .collect::<Vec<_>>();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[1]["strategy"], "merge-patch");
    assert_eq!(updates[1]["patch"], json!({"topic": "retro"}));
    assert_eq!(updates[1]["session_id"], first);
}

#[sqlx::test]
async fn session_history_pages_newest_first(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    let a = app.connect(&admin).await;
    let mut started = Vec::new();
    for _ in 0..5 {
        started.push(app.join(&admin, "lobby", &a).await.json()["session_id"].clone());
        app.delete(&format!("/v1/rooms/lobby/connections/{a}"))
            .bearer(&admin)
            .send()
            .await;
    }
    started.reverse();
    let mut seen = Vec::new();
    let mut uri = "/v1/rooms/lobby/sessions?limit=2".to_owned();
    loop {
        let page = app.get(&uri).bearer(&admin).send().await.json();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/v1/rooms/lobby/sessions?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, started);
}

#[sqlx::test]
async fn join_and_leave_permissions(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join"])]);
    let bob = app.token_for("bob", &[("lobby", &["join", "read"])]);
    let moderator = app.token_for("mod", &[("lobby", &["moderate"])]);
    let reader = app.token_for("reader", &[("lobby", &["read"])]);
    let a = app.connect(&alice).await;

    app.join(&reader, "lobby", &a)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    app.join(&bob, "lobby", &a)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    app.join(&alice, "elsewhere", &a)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        app.join(&alice, "lobby", &a).await.status,
        StatusCode::CREATED
    );

    app.delete(&format!("/v1/rooms/lobby/connections/{a}"))
        .bearer(&bob)
        .send()
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let evicted = app
        .delete(&format!("/v1/rooms/lobby/connections/{a}"))
        .bearer(&moderator)
        .send()
        .await;
    assert_eq!(evicted.status, StatusCode::NO_CONTENT);
    let left = app
        .events("lobby")
        .await
        .into_iter()
        .find(|(kind, _)| kind == "presence.left")
        .unwrap();
    assert_eq!(left.1["reason"], "evicted");
    assert_eq!(left.1["actor"], "mod");

    app.post("/v1/rooms/lobby/clear")
        .bearer(&bob)
        .send()
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    app.get("/v1/rooms/lobby/connections")
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
}

#[sqlx::test]
async fn rooms_are_not_auto_created_when_disabled(pool: PgPool) {
    let mut settings = test_settings();
    settings.presence.auto_create_rooms = false;
    let app = TestApp::with_settings(pool, settings).await;
    let admin = app.admin();
    let a = app.connect(&admin).await;
    app.join(&admin, "ghost", &a)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");
    let connection = app
        .get(&format!("/v1/connections/{a}"))
        .bearer(&admin)
        .send()
        .await
        .json();
    assert_eq!(connection["rooms"], json!([]), "the failed join was undone");
    assert!(app.events("ghost").await.is_empty(), "nobody was told");

    app.create_room("real", json!({})).await;
    assert_eq!(
        app.join(&admin, "real", &a).await.status,
        StatusCode::CREATED
    );
}

#[sqlx::test]
async fn joining_a_deleted_room_revives_it_with_rising_versions(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    app.create_room("lobby", json!({"a": 1})).await;
    app.delete("/v1/rooms/lobby").bearer(&admin).send().await;
    let a = app.connect(&admin).await;
    app.join(&admin, "lobby", &a).await;
    let room = app
        .get("/v1/rooms/lobby")
        .bearer(&admin)
        .send()
        .await
        .json();
    assert_eq!(room["metadata"], json!({}));
    assert_eq!(room["version"], 2, "the tombstone's counter continues");
}

#[sqlx::test]
async fn the_reconciler_repairs_crashes_between_redis_and_postgres(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    let a = app.connect(&admin).await;
    app.join(&admin, "lobby", &a).await;

    // As if Redis restarted empty: the session pointer and members are gone.
    let mut redis = app.state.redis.clone();
    let keys = &app.state.redis_keys;
    let _: () = redis::pipe()
        .del(keys.room_members("lobby"))
        .del(keys.room_session("lobby"))
        .query_async(&mut redis)
        .await
        .unwrap();
    metacast::presence::sweeper::reconcile(&app.state)
        .await
        .unwrap();
    assert!(
        session_rows(&app, "lobby")
            .await
            .iter()
            .all(|(_, open, _)| !open),
        "closed"
    );

    // As if the starter died after Redis started a session: Postgres has no row.
    let orphan = uuid::Uuid::now_v7();
    let _: () = redis::pipe()
        .hset(keys.room_members("hall"), &a, 1)
        .hset_multiple(
            keys.room_session("hall"),
            &[
                ("id", orphan.to_string()),
                ("started_at", "1".into()),
                ("peak", "1".into()),
            ],
        )
        .query_async(&mut redis)
        .await
        .unwrap();
    // Its own command: the index is a key of another Redis Cluster slot.
    let _: () = redis::cmd("ZADD")
        .arg(keys.active_sessions())
        .arg(1)
        .arg("hall")
        .query_async(&mut redis)
        .await
        .unwrap();
    metacast::presence::sweeper::reconcile(&app.state)
        .await
        .unwrap();
    let rows = session_rows(&app, "hall").await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0, rows[0].1), (orphan, true), "recorded as open");
    metacast::presence::sweeper::reconcile(&app.state)
        .await
        .unwrap();
    assert_eq!(session_rows(&app, "hall").await.len(), 1, "idempotent");
    let started = app
        .events("hall")
        .await
        .into_iter()
        .filter(|(k, _)| k == "session.started")
        .count();
    assert_eq!(started, 1);
}

#[sqlx::test]
async fn room_metadata_writes_record_their_events(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    app.create_room("lobby", json!({"a": 1})).await;
    app.patch("/v1/rooms/lobby/metadata")
        .bearer(&admin)
        .json(&json!({"b": 2}))
        .send()
        .await;
    app.delete("/v1/rooms/lobby/metadata")
        .bearer(&admin)
        .send()
        .await;
    let events = app.events("lobby").await;
    assert_eq!(
        kinds(&events),
        [
            "room.metadata.updated",
            "room.metadata.updated",
            "room.metadata.deleted"
        ]
    );
    assert_eq!(events[1].1["metadata"], json!({"a": 1, "b": 2}));
    assert_eq!(events[1].1["patch"], json!({"b": 2}));
    assert_eq!(events[1].1["strategy"], "merge");
    assert_eq!(events[1].1["version"], 2);
    assert_eq!(events[0].1["strategy"], "replace");
    assert_eq!(events[2].1["version"], 3);
    let numbered: i64 = sqlx::query_scalar("select event_seq from rooms where id = 'lobby'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(numbered, 3, "durable changes are numbered for the outbox");
}

/// A TCP proxy between an app and its Redis that counts round trips: the
/// times the app starts sending after it has had an answer, however the
/// kernel splits its bytes. It can also hold one round trip back.
struct RedisProxy {
    url: String,
    trips: Arc<AtomicUsize>,
    /// The round trip (1-based, counted since the last reset) to hold back
    /// until `release`; 0 holds none.
    hold: Arc<AtomicUsize>,
    held: Arc<Notify>,
    release: Arc<Notify>,
}

impl RedisProxy {
    async fn start(redis_url: &str) -> Self {
        let upstream = match redis::Client::open(redis_url)
            .unwrap()
            .get_connection_info()
            .addr()
        {
            redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            other => panic!("a TCP Redis is needed, not {other:?}"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            // The test Redis needs no password (as for every test here).
            url: format!("redis://{}", listener.local_addr().unwrap()),
            trips: Arc::default(),
            hold: Arc::default(),
            held: Arc::default(),
            release: Arc::default(),
        };
        let (trips, hold, held, release) = (
            proxy.trips.clone(),
            proxy.hold.clone(),
            proxy.held.clone(),
            proxy.release.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let answered = Arc::new(AtomicBool::new(true));
                let (trips, hold, held, release) =
                    (trips.clone(), hold.clone(), held.clone(), release.clone());
                let waiting = answered.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buffer).await {
                        if waiting.swap(false, Ordering::SeqCst) {
                            let trip = trips.fetch_add(1, Ordering::SeqCst) + 1;
                            if trip == hold.load(Ordering::SeqCst) {
                                held.notify_one();
                                release.notified().await;
                            }
                        }
                        if to_server.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = from_server.read(&mut buffer).await {
                        // Before the client sees the answer, so its next
                        // command counts as a new round trip.
                        answered.store(true, Ordering::SeqCst);
                        if to_client.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        proxy
    }

    /// The round trips since the last call.
    fn take(&self) -> usize {
        self.trips.swap(0, Ordering::SeqCst)
    }
}

/// A router on `app`'s database and Redis prefix whose Redis traffic goes
/// through `proxy` (the app itself keeps its direct connection, and cleans
/// up the prefix when dropped).
fn proxied_router(app: &TestApp, proxy: &RedisProxy) -> Router {
    let mut settings = (*app.state.settings).clone();
    settings.redis_url = proxy.url.clone().into();
    let redis = metacast::cache::connect(&settings).unwrap();
    let state = metacast::app::build_state(settings, app.state.db.clone(), redis).unwrap();
    metacast::api::router(state)
}

async fn send(router: &Router, method: Method, uri: &str, token: &str) -> StatusCode {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    router.clone().oneshot(request).await.unwrap().status()
}

/// A counting proxy and a router whose Redis traffic goes through it;
/// `None` on a Redis Cluster, where the client talks to every master
/// directly, past any proxy in front of the seed node.
async fn behind_a_proxy(app: &TestApp) -> Option<(RedisProxy, Router)> {
    if app.state.settings.redis_cluster {
        println!("skipped on a Redis Cluster: the proxy sees one node only");
        return None;
    }
    let proxy = RedisProxy::start(app.state.settings.redis_url.expose_secret()).await;
    let router = proxied_router(app, &proxy);
    Some((proxy, router))
}

/// Joins connection `id` to `room` and takes it out again through `router`:
/// after it the Redis connection is made and the scripts are loaded.
async fn join_and_leave(router: &Router, room: &str, id: &str, token: &str) {
    let uri = format!("/v1/rooms/{room}/connections/{id}");
    assert_eq!(
        send(router, Method::PUT, &uri, token).await,
        StatusCode::CREATED
    );
    assert_eq!(
        send(router, Method::DELETE, &uri, token).await,
        StatusCode::NO_CONTENT
    );
}

#[sqlx::test]
async fn a_join_and_a_leave_take_two_redis_round_trips_each(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let Some((proxy, router)) = behind_a_proxy(&app).await else {
        return;
    };
    // As in benchmark R3: a resident keeps the session open, and a caller
    // who is not an admin moves its own connection in and out.
    let admin = app.admin();
    let resident = app.connect(&admin).await;
    app.join(&admin, "arena", &resident).await;
    let alice = app.token_for("alice", &[("arena", &["join"])]);
    let mover = app.connect(&alice).await;
    join_and_leave(&router, "arena", &mover, &alice).await;

    let uri = format!("/v1/rooms/arena/connections/{mover}");
    for _ in 0..3 {
        proxy.take();
        assert_eq!(
            send(&router, Method::PUT, &uri, &alice).await,
            StatusCode::CREATED
        );
        assert_eq!(proxy.take(), 2, "a join: ATTACH, then JOIN");
        assert_eq!(
            send(&router, Method::DELETE, &uri, &alice).await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(proxy.take(), 2, "a leave: LEAVE, then DETACH");
    }
}

#[sqlx::test]
async fn a_join_whose_connection_ends_between_its_two_scripts_leaves_no_ghost(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let Some((proxy, router)) = behind_a_proxy(&app).await else {
        return;
    };
    let alice = app.token_for(
        "alice",
        &[("arena", &["join", "read"]), ("warm-up", &["join"])],
    );
    app.create_room("arena", json!({})).await;
    let warm_up = app.connect(&alice).await;
    join_and_leave(&router, "warm-up", &warm_up, &alice).await;

    // The join's ATTACH goes through; its JOIN waits while the connection
    // is disconnected, which leaves every room it is attached to, this one
    // included (where it is not a member yet).
    let id = app.connect(&alice).await;
    proxy.take();
    proxy.hold.store(2, Ordering::SeqCst);
    let join = tokio::spawn({
        let (router, alice) = (router.clone(), alice.clone());
        let uri = format!("/v1/rooms/arena/connections/{id}");
        async move { send(&router, Method::PUT, &uri, &alice).await }
    });
    proxy.held.notified().await;
    let disconnected = app
        .delete(&format!("/v1/connections/{id}"))
        .bearer(&alice)
        .send()
        .await;
    assert_eq!(disconnected.status, StatusCode::NO_CONTENT);
    proxy.release.notify_one();

    assert_eq!(
        join.await.unwrap(),
        StatusCode::NOT_FOUND,
        "the connection is gone"
    );
    let room = app
        .get("/v1/rooms/arena")
        .bearer(&alice)
        .send()
        .await
        .json();
    assert_eq!(room["occupancy"], 0, "no ghost: {room}");
    assert_eq!(room["session"], Value::Null, "{room}");
    assert!(
        session_rows(&app, "arena").await.is_empty(),
        "no session started"
    );
    assert_eq!(
        kinds(&app.events("arena").await),
        ["room.metadata.updated"],
        "nobody was told of a join"
    );
}

/// A leave and a re-join of the same connection at once: the leave takes
/// the member out of the room, the join attaches it again and adds it back,
/// then the leave's DETACH runs. The connection must still list the room, or
/// its end (which leaves the rooms it lists) would leave a ghost behind.
#[sqlx::test]
async fn a_join_between_a_leave_and_its_detach_keeps_the_member_listed(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let Some((proxy, router)) = behind_a_proxy(&app).await else {
        return;
    };
    let alice = app.token_for(
        "alice",
        &[("arena", &["join", "read"]), ("warm-up", &["join"])],
    );
    let warm_up = app.connect(&alice).await;
    join_and_leave(&router, "warm-up", &warm_up, &alice).await;
    let id = app.connect(&alice).await;
    let uri = format!("/v1/rooms/arena/connections/{id}");
    assert_eq!(
        app.join(&alice, "arena", &id).await.status,
        StatusCode::CREATED
    );

    // The leave's LEAVE goes through; its DETACH waits while the join runs.
    proxy.take();
    proxy.hold.store(2, Ordering::SeqCst);
    let leave = tokio::spawn({
        let (router, alice, uri) = (router.clone(), alice.clone(), uri.clone());
        async move { send(&router, Method::DELETE, &uri, &alice).await }
    });
    proxy.held.notified().await;
    assert_eq!(
        app.join(&alice, "arena", &id).await.status,
        StatusCode::CREATED
    );
    proxy.release.notify_one();
    assert_eq!(leave.await.unwrap(), StatusCode::NO_CONTENT);

    let connection = app
        .get(&format!("/v1/connections/{id}"))
        .bearer(&alice)
        .send()
        .await
        .json();
    assert!(
        connection["rooms"].to_string().contains("arena"),
        "the re-join's attach stays: {connection}"
    );
    let disconnected = app
        .delete(&format!("/v1/connections/{id}"))
        .bearer(&alice)
        .send()
        .await;
    assert_eq!(disconnected.status, StatusCode::NO_CONTENT);
    let room = app
        .get("/v1/rooms/arena")
        .bearer(&alice)
        .send()
        .await
        .json();
    assert_eq!(room["occupancy"], 0, "no ghost: {room}");
}

/// The same race without a proxy, so it also runs on a Redis Cluster: the
/// connection is left as its ATTACH leaves it (in its list of rooms, not
/// yet a member), disconnected, then the join's JOIN arrives.
#[sqlx::test]
async fn a_join_script_arriving_after_its_connection_ended_adds_nobody(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("arena", &["join"])]);
    let id = app.connect(&alice).await;
    let keys = &app.state.redis_keys;
    let mut redis = app.state.redis.clone();
    let _: () = redis::cmd("HSET")
        .arg(keys.connection_rooms(&id))
        .arg("arena")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let disconnected = app
        .delete(&format!("/v1/connections/{id}"))
        .bearer(&alice)
        .send()
        .await;
    assert_eq!(disconnected.status, StatusCode::NO_CONTENT);

    let (status, occupancy, ..): (i64, i64, String, i64, i64, i64, i64) =
        metacast::cache::scripts::JOIN
            .key(keys.room_members("arena"))
            .key(keys.room_session("arena"))
            .key(keys.room_events("arena"))
            .key(keys.room_profiles("arena"))
            .key(keys.room_departed("arena"))
            .arg(&id)
            .arg(uuid::Uuid::now_v7().to_string())
            .arg(format!(r#"{{"connection_id":"{id}","owner":"alice""#))
            .arg(r#""alice""#)
            .arg("{}")
            .arg(0)
            .arg(100)
            .arg(keys.events_channel())
            .arg("arena")
            .arg(1)
            .invoke_async(&mut redis)
            .await
            .unwrap();
    assert_eq!((status, occupancy), (-1, 0), "refused: it departed");
    let members: i64 = redis::cmd("HLEN")
        .arg(keys.room_members("arena"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(members, 0);
    // Remembered for a while, not forever.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys.room_departed("arena"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0, "{ttl}");
}

#[sqlx::test]
async fn a_leave_reports_the_metadata_the_room_last_saw(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    let alice = app.token(
        "alice",
        metacast::auth::MetacastClaim {
            own_metadata: true,
            rooms: [("lobby".to_owned(), vec!["join".to_owned()])].into(),
            ..Default::default()
        },
    );
    let resident = app.connect(&admin).await;
    app.join(&admin, "lobby", &resident).await;
    let id = app
        .post("/v1/connections")
        .bearer(&alice)
        .json(&json!({"metadata": {"name": "Alice"}}))
        .send()
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.join(&alice, "lobby", &id).await;
    let patched = app
        .patch(&format!("/v1/connections/{id}/metadata"))
        .bearer(&alice)
        .json(&json!({"muted": true}))
        .send()
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    let left = app
        .delete(&format!("/v1/rooms/lobby/connections/{id}"))
        .bearer(&alice)
        .send()
        .await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{left:?}");

    let events = app.events("lobby").await;
    assert_eq!(
        kinds(&events),
        [
            "session.started",
            "presence.joined",
            "presence.joined",
            "connection.metadata.updated",
            "presence.left"
        ]
    );
    let left = &events[4].1;
    assert_eq!(left["connection_id"], id.as_str());
    assert_eq!(left["owner"], "alice");
    assert_eq!(left["metadata"], json!({"name": "Alice", "muted": true}));
    assert_eq!(left["reason"], "left");
    assert_eq!(left["occupancy"], 1);
    assert_eq!(left["actor"], "alice");
    let profiles: i64 = redis::cmd("EXISTS")
        .arg(app.state.redis_keys.room_profiles("lobby"))
        .query_async(&mut app.state.redis.clone())
        .await
        .unwrap();
    assert_eq!(profiles, 1, "the resident's profile stays");
    let alices: Option<String> = redis::cmd("HGET")
        .arg(app.state.redis_keys.room_profiles("lobby"))
        .arg(format!("o:{id}"))
        .query_async(&mut app.state.redis.clone())
        .await
        .unwrap();
    assert_eq!(alices, None, "the leaver's profile went with it");
}

#[sqlx::test]
async fn an_occupant_without_a_profile_still_leaves_and_is_still_guarded(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join"])]);
    let bob = app.token_for("bob", &[("lobby", &["join", "read"])]);
    let a = app.connect(&alice).await;
    let b = app.connect(&bob).await;
    app.join(&alice, "lobby", &a).await;
    app.join(&bob, "lobby", &b).await;
    // As if both joined through a version that kept no profiles.
    let _: () = redis::cmd("DEL")
        .arg(app.state.redis_keys.room_profiles("lobby"))
        .query_async(&mut app.state.redis.clone())
        .await
        .unwrap();

    app.delete(&format!("/v1/rooms/lobby/connections/{a}"))
        .bearer(&bob)
        .send()
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let left = app
        .delete(&format!("/v1/rooms/lobby/connections/{a}"))
        .bearer(&alice)
        .send()
        .await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{left:?}");
    app.delete(&format!("/v1/rooms/lobby/connections/{a}"))
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-in-room");
    // And the lease's end describes it from its connection too.
    app.delete(&format!("/v1/connections/{b}"))
        .bearer(&bob)
        .send()
        .await;

    let left: Vec<Value> = app
        .events("lobby")
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "presence.left")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(
        (&left[0]["owner"], &left[0]["metadata"], &left[0]["reason"]),
        (&json!("alice"), &json!({}), &json!("left"))
    );
    assert_eq!(
        (&left[1]["owner"], &left[1]["reason"], &left[1]["occupancy"]),
        (&json!("bob"), &json!("disconnected"), &json!(0))
    );
}

#[sqlx::test]
async fn a_leave_that_is_not_the_last_reaches_the_leavers_own_stream(pool: PgPool) {
    let mut settings = test_settings();
    // Streams close and reopen here; none of them is the connection's end.
    settings.presence.stream_grace = Duration::from_secs(600);
    let app = TestApp::with_settings(pool, settings).await;
    let base = app.listen().await;
    let admin = app.admin();
    let alice = app.token_for("alice", &[("lobby", &["join", "read"])]);
    let resident = app.connect(&admin).await;
    app.join(&admin, "lobby", &resident).await;
    let id = app.connect(&alice).await;
    app.join(&alice, "lobby", &id).await;

    for _ in 0..5 {
        let (status, stream) = crate::sse::open(
            &format!("{base}/v1/connections/{id}/events"),
            &[("authorization", &format!("Bearer {alice}"))],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let mut stream = stream.unwrap();
        stream.expect("sync").await;
        let left = app
            .delete(&format!("/v1/rooms/lobby/connections/{id}"))
            .bearer(&alice)
            .send()
            .await;
        assert_eq!(left.status, StatusCode::NO_CONTENT, "{left:?}");
        let frame = stream.expect("presence.left").await;
        assert_eq!(frame.data["connection_id"], id.as_str());
        app.patch("/v1/rooms/lobby/metadata")
            .bearer(&admin)
            .json(&json!({"after": true}))
            .send()
            .await;
        stream.assert_quiet(Duration::from_millis(300)).await;
        // In again, with the stream closed: the next round opens a new one.
        drop(stream);
        assert_eq!(
            app.join(&alice, "lobby", &id).await.status,
            StatusCode::CREATED
        );
    }
}
