//! The in-memory room document cache behind metadata GETs: it serves what it
//! holds, every write invalidates it on the writing instance before the
//! writer hears back, and on other instances through the wake-up
//! subscription.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;

/// Serves the app with its wake-up subscription, and waits until the
/// cache, which serves nothing before that subscription is up, is in use.
async fn listening(app: &TestApp) {
    app.listen().await;
    for _ in 0..500 {
        if app.state.documents.is_listening() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the wake-up subscription did not come up within 5 s");
}

/// Changes the room's document behind the API's back: no wake-up tells of it.
async fn change_unannounced(pool: &PgPool, room: &str) {
    sqlx::query("update rooms set metadata = '{\"topic\": \"unannounced\"}' where id = $1")
        .bind(room)
        .execute(pool)
        .await
        .unwrap();
}

async fn get(app: &TestApp, room: &str) -> (StatusCode, Option<i64>, Value) {
    let response = app
        .get(&format!("/v1/rooms/{room}/metadata"))
        .bearer(&app.admin())
        .send()
        .await;
    let version = response.status.is_success().then(|| response.version());
    (response.status, version, response.json())
}

#[sqlx::test]
async fn a_read_document_is_served_from_memory_until_a_write_replaces_it(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    // Created before the subscription: the wake-up of its own write, which
    // would drop the copy, can then not arrive after the read below (on a
    // Redis Cluster it takes its time).
    app.create_room("lobby", json!({"topic": "a"})).await;
    listening(&app).await;
    assert_eq!(get(&app, "lobby").await.1, Some(1));

    // A change nobody announces: the cache still answers what it read.
    change_unannounced(&pool, "lobby").await;
    let (_, version, document) = get(&app, "lobby").await;
    assert_eq!((version, document), (Some(1), json!({"topic": "a"})));

    // A write through the API invalidates it.
    let written = app.patch_room("lobby", json!({"n": 1})).await;
    let (_, version, document) = get(&app, "lobby").await;
    assert_eq!(
        (version, document),
        (Some(written), json!({"topic": "unannounced", "n": 1}))
    );
}

#[sqlx::test]
async fn a_deleted_room_is_not_served_from_memory(pool: PgPool) {
    let app = TestApp::new(pool).await;
    listening(&app).await;
    app.create_room("lobby", json!({"topic": "a"})).await;
    assert_eq!(get(&app, "lobby").await.0, StatusCode::OK);
    assert_eq!(get(&app, "lobby").await.0, StatusCode::OK);

    let deleted = app
        .delete("/v1/rooms/lobby")
        .bearer(&app.admin())
        .send()
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    let (status, _, problem) = get(&app, "lobby").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["code"], "room-not-found");
}

/// Readers keep filling the cache while a writer patches; right after each
/// acknowledged write, a read on the same instance sees that version or a
/// newer one.
#[sqlx::test]
async fn a_write_acknowledged_on_an_instance_is_never_read_older_there(pool: PgPool) {
    let app = Arc::new(TestApp::new(pool).await);
    listening(&app).await;
    app.create_room("lobby", json!({})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(get(&app, "lobby").await.0, StatusCode::OK);
                    reads += 1;
                    // A hit never waits, and the test runtime has one
                    // thread: let the writer run.
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();

    for n in 0..40 {
        let acknowledged = app.patch_room("lobby", json!({"n": n})).await;
        let (_, read, document) = get(&app, "lobby").await;
        let read = read.unwrap();
        assert!(
            read >= acknowledged,
            "read version {read} after version {acknowledged} was acknowledged"
        );
        if read == acknowledged {
            assert_eq!(document["n"], n);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.unwrap() > 0, "every reader read");
    }
}

#[sqlx::test]
async fn a_write_through_another_instance_replaces_this_instance_copy(pool: PgPool) {
    let one = TestApp::new(pool).await;
    let two = one.another_instance().await;
    listening(&one).await;
    listening(&two).await;
    one.create_room("lobby", json!({"n": 0})).await;
    assert_eq!(get(&two, "lobby").await.1, Some(1));
    assert_eq!(get(&two, "lobby").await.1, Some(1));

    let written = one.patch_room("lobby", json!({"n": 1})).await;
    // Invalidation travels through Redis pub/sub: soon, not at once. The
    // cached copy would otherwise be served for a whole minute (its maximum age).
    for _ in 0..500 {
        let (_, version, document) = get(&two, "lobby").await;
        if version == Some(written) {
            assert_eq!(document, json!({"n": 1}));
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("instance two still serves version 1 five seconds after the write");
}

/// Seen failing before: every wake-up of a room dropped its cached
/// document, presence included, so the busiest rooms were the coldest.
/// Only a change of the document does now.
#[sqlx::test]
async fn presence_in_a_room_keeps_its_cached_document(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let admin = app.admin();
    app.create_room("lobby", json!({"topic": "a"})).await;
    // The first join starts a session (a durable event); its wake-up must
    // have come and gone before the document is read into the cache.
    let first = app.connect(&admin).await;
    assert!(app.join(&admin, "lobby", &first).await.status.is_success());
    listening(&app).await;
    assert_eq!(get(&app, "lobby").await.1, Some(1));
    change_unannounced(&pool, "lobby").await;

    // Another member comes and goes: wake-ups, but no document change.
    let second = app.connect(&admin).await;
    assert!(app.join(&admin, "lobby", &second).await.status.is_success());
    let left = app
        .delete(&format!("/v1/rooms/lobby/connections/{second}"))
        .bearer(&admin)
        .send()
        .await;
    assert!(left.status.is_success(), "{left:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, version, document) = get(&app, "lobby").await;
    assert_eq!((version, document), (Some(1), json!({"topic": "a"})));
}
