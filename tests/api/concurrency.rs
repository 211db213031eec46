//! No lost updates: concurrent writers to one document all land.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use futures_util::future::join_all;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::TestApp;

const WRITERS: usize = 40;
const LOBBY: &str = "/v1/rooms/lobby/metadata";

#[sqlx::test]
async fn concurrent_merges_keep_every_key(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.create_room("lobby", json!({})).await;

    let writes = (0..WRITERS).map(|i| {
        app.patch(LOBBY)
            .bearer(&token)
            .json(&json!({ format!("key{i}"): i }))
            .send()
    });
    for response in join_all(writes).await {
        assert_eq!(response.status, StatusCode::OK, "{response:?}");
    }

    let read = app.get(LOBBY).bearer(&token).send().await;
    assert_eq!(read.json().as_object().unwrap().len(), WRITERS);
    assert_eq!(read.version(), WRITERS as i64 + 1);
}

/// Writes to several rooms at once share statements (and one room's writes
/// can meet in one): every key lands in its room, each event once, in
/// version order.
#[sqlx::test]
async fn concurrent_merges_across_rooms_keep_every_key(pool: PgPool) {
    const ROOMS: usize = 5;
    let app = TestApp::new(pool).await;
    let token = app.admin();
    for room in 0..ROOMS {
        app.create_room(&format!("r{room}"), json!({})).await;
        // Cached on this instance: the writes start from the cache.
        app.get(&format!("/v1/rooms/r{room}/metadata"))
            .bearer(&token)
            .send()
            .await;
    }
    let writes = (0..WRITERS).map(|i| {
        app.patch(&format!("/v1/rooms/r{}/metadata", i % ROOMS))
            .bearer(&token)
            .json(&json!({ format!("key{i}"): i }))
            .send()
    });
    for response in join_all(writes).await {
        assert_eq!(response.status, StatusCode::OK, "{response:?}");
    }
    for room in 0..ROOMS {
        let read = app
            .get(&format!("/v1/rooms/r{room}/metadata"))
            .bearer(&token)
            .send()
            .await;
        assert_eq!(read.json().as_object().unwrap().len(), WRITERS / ROOMS);
        let versions: Vec<i64> = app
            .events(&format!("r{room}"))
            .await
            .iter()
            .map(|(_, data)| data["version"].as_i64().unwrap())
            .collect();
        let expected: Vec<i64> = (1..=(WRITERS / ROOMS) as i64 + 1).collect();
        assert_eq!(versions, expected, "room r{room}");
    }
}

#[sqlx::test]
async fn concurrent_compare_and_set_never_loses_a_write(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    let initial = app.create_room("lobby", json!({"count": 0})).await;

    // Each writer loops read-modify-write: GET the document, PUT it back
    // with its own key and the counter + 1, `If-Match` the version it read,
    // until it wins. A PUT replaces the whole document, so any write that
    // succeeded from a stale base would drop another writer's key.
    let writers = (0..WRITERS).map(|i| {
        let (app, token) = (&app, &token);
        async move {
            let mut conflicts = 0;
            loop {
                let read = app.get(LOBBY).bearer(token).send().await;
                let base = read.version();
                let mut doc = read.json();
                doc[format!("key{i}")] = json!(i);
                doc["count"] = json!(doc["count"].as_i64().unwrap() + 1);
                let response = app
                    .put(LOBBY)
                    .bearer(token)
                    .if_match(base)
                    .json(&doc)
                    .send()
                    .await;
                match response.status {
                    StatusCode::OK => return (base, response.version(), conflicts),
                    StatusCode::PRECONDITION_FAILED => conflicts += 1,
                    other => panic!("unexpected {other}: {response:?}"),
                }
            }
        }
    });
    let outcomes = join_all(writers).await;

    let successes = outcomes.len() as i64;
    let mut bases = HashSet::new();
    for (base, version, _) in &outcomes {
        assert!(
            bases.insert(*base),
            "two successful writes from base version {base}"
        );
        assert_eq!(*version, base + 1, "exactly one step up from its base");
    }
    let read = app.get(LOBBY).bearer(&token).send().await;
    assert_eq!(
        read.version(),
        initial + successes,
        "final version = initial + successes"
    );
    let doc = read.json();
    assert_eq!(doc["count"], successes, "every increment landed");
    for i in 0..WRITERS {
        assert_eq!(doc[format!("key{i}")], i, "key{i} was lost");
    }
    // Not an assertion on timing: only a record that the race was real.
    let conflicts: usize = outcomes.iter().map(|(_, _, conflicts)| conflicts).sum();
    println!("{conflicts} If-Match conflicts were retried");
}

#[sqlx::test]
async fn concurrent_creates_make_one_room(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    let creates = (0..20).map(|i| {
        app.put(LOBBY)
            .bearer(&token)
            .header("if-none-match", "*")
            .json(&json!({ "creator": i }))
            .send()
    });
    let statuses: Vec<StatusCode> = join_all(creates).await.iter().map(|r| r.status).collect();
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
        .count();
    assert_eq!((created, refused), (1, 19), "{statuses:?}");
    assert_eq!(app.get(LOBBY).bearer(&token).send().await.version(), 1);
}

/// Whether the pool's connection is inside a transaction block: only there
/// may a savepoint be set.
async fn in_transaction(pool: &PgPool) -> bool {
    sqlx::raw_sql("savepoint probe").execute(pool).await.is_ok()
}

/// A TCP proxy to `upstream` that holds every reply back for `delay`, so a
/// request can be cancelled while its statement is surely in flight.
async fn slow_replies_proxy(upstream: String, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.unwrap();
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
            });
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = from_server.read(&mut buffer).await {
                    tokio::time::sleep(delay).await;
                    if to_client.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[sqlx::test]
async fn a_request_cancelled_during_begin_leaves_no_transaction_open(pool: PgPool) {
    let options = (*pool.connect_options()).clone();
    let upstream = format!("{}:{}", options.get_host(), options.get_port());
    let proxy = slow_replies_proxy(upstream, Duration::from_millis(100)).await;
    // One connection, so the check below runs on the one BEGIN was sent on.
    let single = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(options.host("127.0.0.1").port(proxy))
        .await
        .unwrap();
    assert!(!in_transaction(&single).await);
    // The connection is back in the pool once its release ping is answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // As when a client hangs up while the request's BEGIN awaits its reply.
    let cancelled =
        tokio::time::timeout(Duration::from_millis(30), metacast::db::begin(&single)).await;
    assert!(cancelled.is_err(), "BEGIN was still in flight");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !in_transaction(&single).await,
        "the pooled connection is not left inside a transaction"
    );
}
