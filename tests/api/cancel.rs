//! Requests whose client goes away mid-flight. hyper cancels a handler at
//! its next `.await` once the client half-closes the socket; a mutation
//! made of several Redis and Postgres steps must finish all of them anyway
//! (or none), so nothing is left half done for everyone else.

use std::time::Duration;

use axum::http::StatusCode;
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;

use crate::helpers::TestApp;

/// Sends one request on a raw socket and half-closes it after `after`,
/// without reading the answer.
async fn cut(base: &str, method: &str, path: &str, token: &str, body: &str, after: Duration) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    let _ = socket.shutdown().await;
}

/// Every pause from nothing to a few milliseconds: a cut lands after a
/// different step each time.
fn pauses() -> impl Iterator<Item = Duration> {
    (0..40).map(|i| Duration::from_micros(i * 150))
}

async fn scores(app: &TestApp, key: &str) -> Vec<String> {
    let mut redis = app.state.redis.clone();
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_cut_connection_create_leaves_no_connection_without_a_lease(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    let alice = app.token_for("alice", &[]);
    for pause in pauses() {
        cut(&base, "POST", "/v1/connections", &alice, "{}", pause).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let keys = &app.state.redis_keys;
    let reserved = scores(&app, &keys.subject_connections("alice")).await;
    let deadlines = scores(&app, &keys.deadlines()).await;
    let listed = scores(&app, &keys.all_connections()).await;
    let mut redis = app.state.redis.clone();
    for id in &reserved {
        let exists: bool = redis::cmd("EXISTS")
            .arg(keys.connection(id))
            .query_async(&mut redis)
            .await
            .unwrap();
        if exists {
            assert!(
                deadlines.contains(id),
                "connection {id} has no lease deadline"
            );
            assert!(listed.contains(id), "connection {id} is not listed");
        }
    }
    // Whatever was created is the subject's to see and end.
    let mine = app.get("/v1/connections").bearer(&alice).send().await;
    assert_eq!(mine.status, StatusCode::OK);
}

#[sqlx::test]
async fn a_cut_join_leaves_members_sessions_and_events_consistent(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    let admin = app.admin();
    let mut rooms = Vec::new();
    for (i, pause) in pauses().enumerate() {
        let room = format!("cut-{i}");
        let id = app.connect(&admin).await;
        cut(
            &base,
            "PUT",
            &format!("/v1/rooms/{room}/connections/{id}"),
            &admin,
            "",
            pause,
        )
        .await;
        rooms.push((room, id));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let keys = &app.state.redis_keys;
    let mut redis = app.state.redis.clone();
    for (room, id) in &rooms {
        let member: bool = redis::cmd("HEXISTS")
            .arg(keys.room_members(room))
            .arg(id)
            .query_async(&mut redis)
            .await
            .unwrap();
        let attached: bool = redis::cmd("HEXISTS")
            .arg(keys.connection_rooms(id))
            .arg(room)
            .query_async(&mut redis)
            .await
            .unwrap();
        let open: i64 = sqlx::query_scalar(
            "select count(*) from sessions where room = $1 and ended_at is null",
        )
        .bind(room)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
        let joined = app
            .events(room)
            .await
            .iter()
            .filter(|(kind, _)| kind == "presence.joined")
            .count();
        if member {
            assert!(
                attached,
                "{room}: a member whose connection does not list the room"
            );
            assert_eq!(open, 1, "{room}: a member and no open session");
            assert_eq!(joined, 1, "{room}: a member nobody was told about");
        } else {
            assert_eq!(open, 0, "{room}: an open session and nobody in it");
        }
    }
}
