//! Postgres stopped and restarted under a running instance.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::client::{Api, Response};
use crate::harness::{PostgresServer, RedisServer};
use crate::instance::InProcess;

const META: &str = "/v1/rooms/lobby/metadata";
/// Generous: the repairs run every second or so; a busy machine is slower.
const WAIT: Duration = Duration::from_secs(20);

async fn join(api: &Api, room: &str, conn: &str) -> Response {
    let path = format!("/v1/rooms/{room}/connections/{conn}");
    api.send(Method::PUT, &path, &[], None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_answers_503_and_recovers_without_a_restart() {
    let mut pg = PostgresServer::start().await;
    let redis = RedisServer::start().await;
    let app = InProcess::start(&pg.url("metacast"), &redis.url()).await;
    let api = &app.api;

    // Before: a room with an occupant in its session, and a subscriber.
    assert_eq!(
        api.put(META, &json!({"topic": "before"})).await.status,
        StatusCode::CREATED
    );
    let inside = api.connect(30).await;
    let joined = join(api, "lobby", &inside).await;
    assert_eq!(joined.status, StatusCode::CREATED, "{joined:?}");
    let session = joined.json()["session_id"].as_str().unwrap().to_owned();
    let outside = api.connect(30).await;
    let mut stream = api.stream("/v1/rooms/lobby/events", None).await.unwrap();
    assert_eq!(stream.expect_within(WAIT).await.event, "sync");

    pg.stop();

    // Durable calls: 503 with Retry-After, fast, whatever pooled
    // connections the instance still holds. (The metadata document its
    // writer cached is still served: nothing can change it meanwhile.)
    for _ in 0..3 {
        api.get("/v1/rooms/lobby")
            .await
            .assert_outage("database-unavailable");
    }
    api.put(META, &json!({"topic": "lost"}))
        .await
        .assert_outage("database-unavailable");
    api.patch(META, &json!({"lost": true}))
        .await
        .assert_outage("database-unavailable");
    api.patch("/v1/rooms/lobby/session/metadata", &json!({"lost": true}))
        .await
        .assert_outage("database-unavailable");
    // A first join into an empty room must record its session first.
    join(api, "empty", &outside)
        .await
        .assert_outage("database-unavailable");
    api.get("/readyz")
        .await
        .assert_outage("database-unavailable");
    // The last leave ends the session in Postgres: refused too, and the
    // reconciler ends the session once Postgres is back.
    let leave = api
        .delete(&format!("/v1/rooms/lobby/connections/{inside}"))
        .await;
    leave.assert_outage("database-unavailable");

    pg.restart().await;

    // Recovery without restarting metacast; nothing refused was written.
    let read = api
        .poll_until(META, WAIT, |r| r.status == StatusCode::OK)
        .await;
    assert_eq!(
        (read.json(), read.version()),
        (json!({"topic": "before"}), 1)
    );
    let empty = api.get("/v1/rooms/empty").await;
    assert_eq!(
        empty.status,
        StatusCode::NOT_FOUND,
        "the refused join created no room: {empty:?}"
    );
    let rooms = api.get(&format!("/v1/connections/{outside}")).await.json()["rooms"].clone();
    assert_eq!(rooms, json!([]), "the refused join was undone");
    // The session of the emptied room does not stay open.
    api.poll_until("/v1/rooms/lobby/session", WAIT, |r| {
        r.status == StatusCode::NOT_FOUND
    })
    .await;
    let history = api.get("/v1/rooms/lobby/sessions").await.json();
    let ended = &history["items"][0];
    assert_eq!(ended["id"], session.as_str(), "{history}");
    assert!(ended["ended_at"].is_string(), "{history}");
    assert_eq!(
        ended["final_metadata"],
        json!({}),
        "the refused session write: {history}"
    );
    assert_eq!(api.get("/readyz").await.status, StatusCode::OK);

    // Writes work again; the subscriber saw the leave and the session end,
    // then this write, and nothing of the refused ones.
    let written = api.put(META, &json!({"topic": "after"})).await;
    assert_eq!(
        (written.status, written.version()),
        (StatusCode::OK, 2),
        "{written:?}"
    );
    let mut kinds = Vec::new();
    while kinds.last() != Some(&"room.metadata.updated".to_owned()) {
        let frame = stream.expect_within(WAIT).await;
        if frame.event == "room.metadata.updated" {
            assert_eq!(frame.data["version"], 2, "{frame:?}");
        }
        kinds.push(frame.event);
    }
    assert_eq!(
        kinds,
        ["presence.left", "session.ended", "room.metadata.updated"]
    );
    let rejoined = join(api, "empty", &outside).await;
    assert_eq!(rejoined.status, StatusCode::CREATED, "{rejoined:?}");
}
