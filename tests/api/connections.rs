//! Connections through HTTP: creation, visibility, disconnect, heartbeats and
//! lease expiry, metadata (strategies, preconditions, limits, permissions,
//! concurrency) and listing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use metacast::auth::MetacastClaim;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{self, TestApp};

const CONNECTIONS: &str = "/v1/connections";

/// A token for `sub` with `grants` on rooms and `own_metadata` as given.
fn token(app: &TestApp, sub: &str, own_metadata: bool, grants: &[(&str, &[&str])]) -> String {
    let rooms: BTreeMap<String, Vec<String>> = grants
        .iter()
        .map(|(pattern, actions)| {
            (
                pattern.to_string(),
                actions.iter().map(|a| a.to_string()).collect(),
            )
        })
        .collect();
    app.token(
        sub,
        MetacastClaim {
            own_metadata,
            rooms,
            ..MetacastClaim::default()
        },
    )
}

/// Creates a connection with `body` (none: an empty request body) and
/// returns its envelope, asserting 201.
async fn create(app: &TestApp, token: &str, body: Option<Value>) -> Value {
    let request = app.request(Method::POST, CONNECTIONS).bearer(token);
    let request = match &body {
        Some(body) => request.json(body),
        None => request,
    };
    let response = request.send().await;
    assert_eq!(response.status, StatusCode::CREATED, "{response:?}");
    response.json()
}

/// Creates a connection and returns its id.
async fn create_id(app: &TestApp, token: &str) -> String {
    create(app, token, None).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Creates a connection with a lease of `ttl` seconds and returns its id.
async fn create_with_ttl(app: &TestApp, token: &str, ttl: u64) -> String {
    create(app, token, Some(json!({"ttl_seconds": ttl}))).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn conn_uri(id: &str) -> String {
    format!("{CONNECTIONS}/{id}")
}

fn metadata_uri(id: &str) -> String {
    format!("{CONNECTIONS}/{id}/metadata")
}

/// Joins connection `id` to `room` with `token`; asserts a fresh join.
async fn join(app: &TestApp, token: &str, room: &str, id: &str) {
    let response = app
        .put(&format!("/v1/rooms/{room}/connections/{id}"))
        .bearer(token)
        .send()
        .await;
    assert_eq!(response.status, StatusCode::CREATED, "{response:?}");
}

/// The ids of the room's occupants, as the admin sees them.
async fn occupant_ids(app: &TestApp, room: &str) -> Vec<String> {
    let response = app
        .get(&format!("/v1/rooms/{room}/connections"))
        .bearer(&app.admin())
        .send()
        .await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    response.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The room's `occupancy`, as the admin sees it.
async fn occupancy(app: &TestApp, room: &str) -> i64 {
    let response = app
        .get(&format!("/v1/rooms/{room}"))
        .bearer(&app.admin())
        .send()
        .await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    response.json()["occupancy"].as_i64().unwrap()
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a timestamp"))
        .parse()
        .unwrap_or_else(|err| panic!("{value} is not RFC 3339: {err}"))
}

fn ids_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

/// Waits past a 1 s lease, then runs one sweep and returns how many ended.
async fn expire_and_sweep(app: &TestApp) -> usize {
    tokio::time::sleep(Duration::from_millis(1300)).await;
    metacast::presence::sweeper::sweep(&app.state)
        .await
        .unwrap()
}

// ---------------------------------------------------------------- create

#[sqlx::test]
async fn create_without_metadata_starts_empty_at_version_0(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.token_for("alice", &[]);
    let response = app
        .request(Method::POST, CONNECTIONS)
        .bearer(&token)
        .send()
        .await;
    assert_eq!(response.status, StatusCode::CREATED, "{response:?}");
    assert_eq!(response.version(), 0);
    let body = response.json();
    let id = body["id"].as_str().unwrap();
    assert!(uuid::Uuid::try_parse(id).is_ok(), "id {id} is a UUID");
    assert_eq!(
        response.header("location"),
        Some(conn_uri(id).as_str()),
        "Location names the new connection"
    );
    assert_eq!(body["owner"], "alice");
    assert_eq!(body["metadata"], json!({}));
    assert_eq!(body["version"], 0);
    assert_eq!(body["rooms"], json!([]));
    let lease = time(&body["expires_at"]) - time(&body["created_at"]);
    assert_eq!(lease.num_seconds(), 30, "the default lease is 30 s");

    // An empty body with a JSON Content-Type is the same as no body.
    let empty = app
        .request(Method::POST, CONNECTIONS)
        .bearer(&token)
        .body("application/json", "")
        .send()
        .await;
    assert_eq!(empty.status, StatusCode::CREATED, "{empty:?}");
    assert_eq!(empty.version(), 0);

    // And `{}` too.
    let braces = create(&app, &token, Some(json!({}))).await;
    assert_eq!(
        (braces["version"].clone(), braces["metadata"].clone()),
        (json!(0), json!({}))
    );

    let read = app.get(&conn_uri(id)).bearer(&token).send().await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    assert_eq!(read.version(), 0);
    assert_eq!(read.json(), body, "GET returns what POST did");
}

#[sqlx::test]
async fn create_with_metadata_starts_at_version_1(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.token_for("alice", &[]);
    let response = app
        .request(Method::POST, CONNECTIONS)
        .bearer(&token)
        .json(&json!({"metadata": {"name": "Alice", "muted": false}, "ttl_seconds": 60}))
        .send()
        .await;
    assert_eq!(response.status, StatusCode::CREATED, "{response:?}");
    assert_eq!(response.header("etag"), Some("\"1\""));
    let body = response.json();
    assert_eq!(body["metadata"], json!({"name": "Alice", "muted": false}));
    assert_eq!(body["version"], 1);
    let lease = time(&body["expires_at"]) - time(&body["created_at"]);
    assert_eq!(lease.num_seconds(), 60);

    // Metadata `{}` given explicitly is a document created by a write.
    let empty = create(&app, &token, Some(json!({"metadata": {}}))).await;
    assert_eq!(empty["version"], 1);
    assert_eq!(empty["metadata"], json!({}));

    let id = body["id"].as_str().unwrap();
    let metadata = app.get(&metadata_uri(id)).bearer(&token).send().await;
    assert_eq!(metadata.status, StatusCode::OK, "{metadata:?}");
    assert_eq!(metadata.version(), 1);
    assert_eq!(
        metadata.json(),
        json!({"name": "Alice", "muted": false}),
        "the metadata endpoint returns the bare document"
    );
}

#[sqlx::test]
async fn ttl_must_be_within_bounds(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.token_for("alice", &[]);
    for ttl in [1, 3600] {
        let body = create(&app, &token, Some(json!({"ttl_seconds": ttl}))).await;
        let lease = time(&body["expires_at"]) - time(&body["created_at"]);
        assert_eq!(lease.num_seconds(), ttl, "ttl {ttl}");
    }
    for ttl in [json!(0), json!(3601), json!(u64::MAX)] {
        app.request(Method::POST, CONNECTIONS)
            .bearer(&token)
            .json(&json!({"ttl_seconds": ttl}))
            .send()
            .await
            .assert_problem(StatusCode::BAD_REQUEST, "invalid-ttl");
    }
    for ttl in [json!(-1), json!(1.5), json!("30")] {
        let response = app
            .request(Method::POST, CONNECTIONS)
            .bearer(&token)
            .json(&json!({"ttl_seconds": ttl}))
            .send()
            .await;
        assert_eq!(
            response.status,
            StatusCode::BAD_REQUEST,
            "ttl {ttl}: {response:?}"
        );
    }
    let mine = app.get(CONNECTIONS).bearer(&token).send().await.json();
    assert_eq!(ids_of(&mine).len(), 2, "only the valid ones were created");
}

#[sqlx::test]
async fn bad_create_bodies_are_rejected(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.token_for("alice", &[]);
    let post = |content_type: &'static str, body: String| {
        app.request(Method::POST, CONNECTIONS)
            .bearer(&token)
            .body(content_type, body)
            .send()
    };
    post(
        "application/json",
        json!({"metadata": {}, "colour": "red"}).to_string(),
    )
    .await
    .assert_problem(StatusCode::BAD_REQUEST, "invalid-body");
    post("application/json", "[]".into())
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-body");
    for metadata in [json!([1, 2]), json!("text"), json!(7)] {
        post(
            "application/json",
            json!({"metadata": metadata}).to_string(),
        )
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "document-not-object");
    }
    post("application/json", "{not json".into())
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-json");
    post("text/plain", "{}".into())
        .await
        .assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
    post(
        "application/json",
        format!("{{\"metadata\":{}}}", nested(33)),
    )
    .await
    .assert_problem(StatusCode::BAD_REQUEST, "document-too-deep");
    post(
        "application/json",
        json!({"metadata": {"blob": "x".repeat(64 * 1024)}}).to_string(),
    )
    .await
    .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "document-too-large");

    app.request(Method::POST, CONNECTIONS)
        .send()
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "invalid-token");

    let mine = app.get(CONNECTIONS).bearer(&token).send().await.json();
    assert_eq!(mine["items"], json!([]), "nothing was created");
}

#[sqlx::test]
async fn quota_limits_connections_per_subject(pool: PgPool) {
    let mut settings = helpers::test_settings();
    settings.presence.max_connections_per_subject = 2;
    let app = TestApp::with_settings(pool, settings).await;
    let alice = app.token_for("alice", &[]);
    let bob = app.token_for("bob", &[]);

    let first = create_id(&app, &alice).await;
    create_id(&app, &alice).await;
    let over = app
        .request(Method::POST, CONNECTIONS)
        .bearer(&alice)
        .send()
        .await;
    over.assert_problem(StatusCode::TOO_MANY_REQUESTS, "too-many-connections");
    // A fresh token for the same subject does not reset the quota.
    app.request(Method::POST, CONNECTIONS)
        .bearer(&app.token_for("alice", &[("lobby", &["read"])]))
        .send()
        .await
        .assert_problem(StatusCode::TOO_MANY_REQUESTS, "too-many-connections");

    // The quota is per subject.
    create_id(&app, &bob).await;

    let deleted = app.delete(&conn_uri(&first)).bearer(&alice).send().await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    create_id(&app, &alice).await;
    app.request(Method::POST, CONNECTIONS)
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::TOO_MANY_REQUESTS, "too-many-connections");

    let mine = app.get(CONNECTIONS).bearer(&alice).send().await.json();
    assert_eq!(ids_of(&mine).len(), 2);
}

// ------------------------------------------------------------ visibility

#[sqlx::test]
async fn visibility_follows_ownership_and_room_reads(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join"])]);
    let id = create_id(&app, &alice).await;
    join(&app, &alice, "lobby", &id).await;

    let reader = app.token_for("bob", &[("lobby", &["read"])]);
    let prefix_reader = app.token_for("dave", &[("lob*", &["read"])]);
    let other_reader = app.token_for("carol", &[("elsewhere", &["read"])]);
    let joiner = app.token_for("erin", &[("lobby", &["join", "write_room"])]);
    let stranger = app.token_for("mallory", &[]);

    for (who, token) in [
        ("owner", &alice),
        ("admin", &app.admin()),
        ("reader of its room", &reader),
        ("prefix reader of its room", &prefix_reader),
    ] {
        let response = app.get(&conn_uri(&id)).bearer(token).send().await;
        assert_eq!(response.status, StatusCode::OK, "{who}: {response:?}");
        let body = response.json();
        assert_eq!(body["id"], id.as_str(), "{who}");
        assert_eq!(body["owner"], "alice", "{who}");
        assert_eq!(body["rooms"], json!(["lobby"]), "{who}");
        assert_eq!(response.version(), 0, "{who}");
        let metadata = app.get(&metadata_uri(&id)).bearer(token).send().await;
        assert_eq!(metadata.status, StatusCode::OK, "{who}: {metadata:?}");
        assert_eq!(metadata.json(), json!({}), "{who}");
    }
    for (who, token) in [
        ("reader of another room", &other_reader),
        ("non-reader of its room", &joiner),
        ("stranger", &stranger),
    ] {
        for uri in [conn_uri(&id), metadata_uri(&id)] {
            let response = app.get(&uri).bearer(token).send().await;
            assert_eq!(
                response.status,
                StatusCode::NOT_FOUND,
                "{who}: {response:?}"
            );
            response.assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
        }
    }

    // Once it leaves the room, the room's readers no longer see it.
    let left = app
        .delete(&format!("/v1/rooms/lobby/connections/{id}"))
        .bearer(&alice)
        .send()
        .await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{left:?}");
    app.get(&conn_uri(&id))
        .bearer(&reader)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    let own = app.get(&conn_uri(&id)).bearer(&alice).send().await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.json()["rooms"], json!([]));
}

#[sqlx::test]
async fn ids_are_validated_and_unknown_ones_are_404(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    for id in ["not-a-uuid", "123", "01937b2e-8f4a-7cc3-9a6e-3c1b5d2f4e6"] {
        for (method, uri) in [
            (Method::GET, conn_uri(id)),
            (Method::DELETE, conn_uri(id)),
            (Method::POST, format!("{}/heartbeat", conn_uri(id))),
            (Method::GET, metadata_uri(id)),
            (Method::PUT, format!("/v1/rooms/lobby/connections/{id}")),
        ] {
            app.request(method.clone(), &uri)
                .bearer(&admin)
                .send()
                .await
                .assert_problem(StatusCode::BAD_REQUEST, "invalid-connection-id");
        }
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    for (method, uri) in [
        (Method::GET, conn_uri(&unknown)),
        (Method::DELETE, conn_uri(&unknown)),
        (Method::POST, format!("{}/heartbeat", conn_uri(&unknown))),
        (Method::GET, metadata_uri(&unknown)),
    ] {
        app.request(method.clone(), &uri)
            .bearer(&admin)
            .send()
            .await
            .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    }
    app.get(&conn_uri(&unknown))
        .send()
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "invalid-token");
}

// ---------------------------------------------------------------- delete

#[sqlx::test]
async fn owner_deletes_and_the_connection_leaves_its_rooms(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("*", &["join"])]);
    let bob = app.token_for("bob", &[("lobby", &["join"])]);
    let id = create_id(&app, &alice).await;
    let other = create_id(&app, &bob).await;
    join(&app, &alice, "lobby", &id).await;
    join(&app, &alice, "team:1", &id).await;
    join(&app, &bob, "lobby", &other).await;
    assert_eq!(occupancy(&app, "lobby").await, 2);
    assert_eq!(occupancy(&app, "team:1").await, 1);

    let deleted = app.delete(&conn_uri(&id)).bearer(&alice).send().await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    assert!(deleted.body.is_empty());

    for uri in [conn_uri(&id), metadata_uri(&id)] {
        app.get(&uri)
            .bearer(&alice)
            .send()
            .await
            .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    }
    app.request(Method::POST, &format!("{}/heartbeat", conn_uri(&id)))
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    app.delete(&conn_uri(&id))
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");

    assert_eq!(occupant_ids(&app, "lobby").await, vec![other.clone()]);
    assert_eq!(occupancy(&app, "lobby").await, 1);
    assert_eq!(occupant_ids(&app, "team:1").await, Vec::<String>::new());
    assert_eq!(occupancy(&app, "team:1").await, 0);
    // It was the last one in team:1: that session ended.
    app.get("/v1/rooms/team:1/session")
        .bearer(&app.admin())
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no-active-session");
    // The other room's session goes on.
    assert_eq!(
        app.get("/v1/rooms/lobby/session")
            .bearer(&app.admin())
            .send()
            .await
            .status,
        StatusCode::OK
    );
    // A deleted connection cannot rejoin.
    let rejoin = app
        .put(&format!("/v1/rooms/lobby/connections/{id}"))
        .bearer(&alice)
        .send()
        .await;
    rejoin.assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    assert_eq!(occupancy(&app, "lobby").await, 1);
}

#[sqlx::test]
async fn only_owner_or_admin_deletes(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join"])]);
    let id = create_id(&app, &alice).await;
    join(&app, &alice, "lobby", &id).await;

    let reader = app.token_for("bob", &[("lobby", &["read"])]);
    app.delete(&conn_uri(&id))
        .bearer(&reader)
        .send()
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let stranger = app.token_for("mallory", &[("elsewhere", &["read"])]);
    app.delete(&conn_uri(&id))
        .bearer(&stranger)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    assert_eq!(
        occupant_ids(&app, "lobby").await,
        vec![id.clone()],
        "still in"
    );

    let by_admin = app.delete(&conn_uri(&id)).bearer(&app.admin()).send().await;
    assert_eq!(by_admin.status, StatusCode::NO_CONTENT, "{by_admin:?}");
    assert_eq!(occupancy(&app, "lobby").await, 0);
    app.get(&conn_uri(&id))
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
}

// ------------------------------------------------------ heartbeat, expiry

#[sqlx::test]
async fn heartbeat_extends_the_lease(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join"])]);
    let created = create(&app, &alice, Some(json!({"ttl_seconds": 30}))).await;
    let id = created["id"].as_str().unwrap().to_owned();
    join(&app, &alice, "lobby", &id).await;
    let before = time(&created["expires_at"]);
    let heartbeat = format!("{}/heartbeat", conn_uri(&id));

    tokio::time::sleep(Duration::from_millis(50)).await;
    let response = app
        .request(Method::POST, &heartbeat)
        .bearer(&alice)
        .send()
        .await;
    assert_eq!(response.status, StatusCode::NO_CONTENT, "{response:?}");
    assert!(response.body.is_empty());
    let after = time(&app.get(&conn_uri(&id)).bearer(&alice).send().await.json()["expires_at"]);
    assert!(after > before, "{after} is later than {before}");
    assert!(
        after - before < chrono::Duration::seconds(5),
        "renewed by its own ttl, not more: {before} → {after}"
    );

    let by_admin = app
        .request(Method::POST, &heartbeat)
        .bearer(&app.admin())
        .send()
        .await;
    assert_eq!(by_admin.status, StatusCode::NO_CONTENT, "{by_admin:?}");

    let reader = app.token_for("bob", &[("lobby", &["read"])]);
    app.request(Method::POST, &heartbeat)
        .bearer(&reader)
        .send()
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let stranger = app.token_for("mallory", &[]);
    app.request(Method::POST, &heartbeat)
        .bearer(&stranger)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
}

#[sqlx::test]
async fn expired_connection_is_swept_from_its_rooms(pool: PgPool) {
    let mut settings = helpers::test_settings();
    settings.presence.max_connections_per_subject = 1;
    let app = TestApp::with_settings(pool, settings).await;
    let alice = app.token_for("alice", &[("lobby", &["join"])]);
    let id = create_with_ttl(&app, &alice, 1).await;
    join(&app, &alice, "lobby", &id).await;
    assert_eq!(occupancy(&app, "lobby").await, 1);
    let heartbeat = format!("{}/heartbeat", conn_uri(&id));

    tokio::time::sleep(Duration::from_millis(1300)).await;
    // A heartbeat after the lease ran out does not revive it, swept or not.
    app.request(Method::POST, &heartbeat)
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    let ended = metacast::presence::sweeper::sweep(&app.state)
        .await
        .unwrap();
    assert_eq!(ended, 1);

    app.request(Method::POST, &heartbeat)
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    app.get(&conn_uri(&id))
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    assert_eq!(occupant_ids(&app, "lobby").await, Vec::<String>::new());
    assert_eq!(occupancy(&app, "lobby").await, 0);
    app.get("/v1/rooms/lobby/session")
        .bearer(&app.admin())
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no-active-session");
    let listed = app
        .get(CONNECTIONS)
        .bearer(&app.admin())
        .send()
        .await
        .json();
    assert_eq!(listed["items"], json!([]));
    // Its quota slot is free again.
    create_id(&app, &alice).await;
    // A second sweep finds nothing more.
    assert_eq!(
        metacast::presence::sweeper::sweep(&app.state)
            .await
            .unwrap(),
        0
    );
}

#[sqlx::test]
async fn heartbeating_connection_survives_the_sweep_that_ends_a_silent_one(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join", "read"])]);
    let silent = create_with_ttl(&app, &alice, 1).await;
    let beating = create_with_ttl(&app, &alice, 1).await;
    join(&app, &alice, "lobby", &silent).await;
    join(&app, &alice, "lobby", &beating).await;
    assert_eq!(occupancy(&app, "lobby").await, 2);

    // 1.5 s in all: past the silent one's lease, with a heartbeat every
    // 300 ms keeping the other alive.
    let heartbeat = format!("{}/heartbeat", conn_uri(&beating));
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let response = app
            .request(Method::POST, &heartbeat)
            .bearer(&alice)
            .send()
            .await;
        assert_eq!(response.status, StatusCode::NO_CONTENT, "{response:?}");
    }
    let ended = metacast::presence::sweeper::sweep(&app.state)
        .await
        .unwrap();
    assert_eq!(ended, 1, "only the silent one ended");

    assert_eq!(occupant_ids(&app, "lobby").await, vec![beating.clone()]);
    assert_eq!(occupancy(&app, "lobby").await, 1);
    app.get(&conn_uri(&silent))
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    let alive = app.get(&conn_uri(&beating)).bearer(&alice).send().await;
    assert_eq!(alive.status, StatusCode::OK, "{alive:?}");
    assert_eq!(alive.json()["rooms"], json!(["lobby"]));
    assert_eq!(
        app.get("/v1/rooms/lobby/session")
            .bearer(&alice)
            .send()
            .await
            .status,
        StatusCode::OK,
        "the session goes on while one connection remains"
    );

    // Once it stops heartbeating it expires too.
    assert_eq!(expire_and_sweep(&app).await, 1);
    assert_eq!(occupancy(&app, "lobby").await, 0);
}

// -------------------------------------------------------------- metadata

#[sqlx::test]
async fn metadata_strategies_through_http(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = token(&app, "alice", true, &[]);
    let id = create_id(&app, &alice).await;
    let uri = metadata_uri(&id);
    let patch = |content_type: &str, query: &str, body: Value| {
        app.patch(&format!("{uri}{query}"))
            .bearer(&alice)
            .body(content_type, body.to_string())
            .send()
    };

    let put = app
        .put(&uri)
        .bearer(&alice)
        .json(&json!({"a": {"x": 1, "y": 2}, "keep": true}))
        .send()
        .await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");
    assert_eq!(put.version(), 1);
    assert_eq!(put.json(), json!({"a": {"x": 1, "y": 2}, "keep": true}));

    let merged = patch("application/json", "", json!({"a": {"x": 3}, "n": null})).await;
    assert_eq!(merged.status, StatusCode::OK, "{merged:?}");
    assert_eq!(merged.version(), 2);
    assert_eq!(
        merged.json(),
        json!({"a": {"x": 3}, "keep": true, "n": null})
    );

    let explicit = patch("application/json", "?strategy=merge", json!({"m": 1})).await;
    assert_eq!(explicit.version(), 3);
    assert_eq!(
        explicit.json(),
        json!({"a": {"x": 3}, "keep": true, "n": null, "m": 1})
    );

    let deep = patch(
        "application/json; charset=utf-8",
        "?strategy=deepMerge",
        json!({"a": {"y": 5, "z": null}}),
    )
    .await;
    assert_eq!(deep.status, StatusCode::OK, "{deep:?}");
    assert_eq!(deep.version(), 4);
    assert_eq!(
        deep.json(),
        json!({"a": {"x": 3, "y": 5, "z": null}, "keep": true, "n": null, "m": 1})
    );

    let merge_patch = patch(
        "application/merge-patch+json",
        "",
        json!({"a": {"z": null}, "n": null, "m": null}),
    )
    .await;
    assert_eq!(merge_patch.status, StatusCode::OK, "{merge_patch:?}");
    assert_eq!(merge_patch.version(), 5);
    assert_eq!(
        merge_patch.json(),
        json!({"a": {"x": 3, "y": 5}, "keep": true})
    );

    let json_patch = patch(
        "application/json-patch+json",
        "",
        json!([
            {"op": "test", "path": "/keep", "value": true},
            {"op": "remove", "path": "/keep"},
            {"op": "add", "path": "/list", "value": [1]}
        ]),
    )
    .await;
    assert_eq!(json_patch.status, StatusCode::OK, "{json_patch:?}");
    assert_eq!(json_patch.version(), 6);
    assert_eq!(
        json_patch.json(),
        json!({"a": {"x": 3, "y": 5}, "list": [1]})
    );

    let failed = patch(
        "application/json-patch+json",
        "",
        json!([{"op": "test", "path": "/list", "value": [2]}]),
    )
    .await;
    failed.assert_problem(StatusCode::CONFLICT, "patch-test-failed");
    patch("text/plain", "", json!({}))
        .await
        .assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
    patch("application/merge-patch+json", "?strategy=merge", json!({}))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "strategy-not-allowed");
    patch("application/json", "?strategy=sideways", json!({}))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-strategy");
    app.put(&uri)
        .bearer(&alice)
        .json(&json!([1]))
        .send()
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "document-not-object");

    let read = app.get(&uri).bearer(&alice).send().await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.version(), 6, "failed writes changed nothing");
    assert_eq!(read.json(), json!({"a": {"x": 3, "y": 5}, "list": [1]}));
    let envelope = app.get(&conn_uri(&id)).bearer(&alice).send().await;
    assert_eq!(envelope.version(), 6);
    let envelope = envelope.json();
    assert_eq!(envelope["version"], 6);
    assert_eq!(
        envelope["metadata"],
        json!({"a": {"x": 3, "y": 5}, "list": [1]})
    );
}

#[sqlx::test]
async fn metadata_preconditions(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = token(&app, "alice", true, &[]);
    let created = create(&app, &alice, Some(json!({"metadata": {"a": 1}}))).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let uri = metadata_uri(&id);

    app.put(&uri)
        .bearer(&alice)
        .if_match(0)
        .json(&json!({"b": 1}))
        .send()
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED, "version-mismatch");
    app.patch(&uri)
        .bearer(&alice)
        .if_match(7)
        .json(&json!({"b": 1}))
        .send()
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED, "version-mismatch");
    app.put(&uri)
        .bearer(&alice)
        .header("if-none-match", "*")
        .json(&json!({"b": 1}))
        .send()
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED, "already-exists");
    let unchanged = app.get(&uri).bearer(&alice).send().await;
    assert_eq!(
        (unchanged.version(), unchanged.json()),
        (1, json!({"a": 1})),
        "412 changes nothing"
    );

    let current = app
        .patch(&uri)
        .bearer(&alice)
        .if_match(1)
        .json(&json!({"b": 2}))
        .send()
        .await;
    assert_eq!(current.status, StatusCode::OK, "{current:?}");
    assert_eq!(current.version(), 2);
    assert_eq!(current.json(), json!({"a": 1, "b": 2}));

    let fresh = app
        .get(&uri)
        .bearer(&alice)
        .header("if-none-match", "\"2\"")
        .send()
        .await;
    assert_eq!(fresh.status, StatusCode::NOT_MODIFIED, "{fresh:?}");
    assert_eq!(fresh.version(), 2);
    assert!(fresh.body.is_empty());
    let stale = app
        .get(&uri)
        .bearer(&alice)
        .header("if-none-match", "\"1\"")
        .send()
        .await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.json(), json!({"a": 1, "b": 2}));

    app.put(&uri)
        .bearer(&alice)
        .header("if-match", "not-an-etag")
        .json(&json!({}))
        .send()
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-precondition");
}

#[sqlx::test]
async fn metadata_limits(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = token(&app, "alice", true, &[]);
    let id = create_id(&app, &alice).await;
    let uri = metadata_uri(&id);
    let put = |body: String| {
        app.put(&uri)
            .bearer(&alice)
            .body("application/json", body)
            .send()
    };

    let ok = put(nested(32)).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(ok.version(), 1);
    put(nested(33))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "document-too-deep");
    put(json!({"blob": "x".repeat(64 * 1024)}).to_string())
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "document-too-large");
    put(json!({"blob": "x".repeat(1024 * 1024)}).to_string())
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");

    // Limits apply to the patched result, not just the body.
    let path = format!("{}/b", "/a".repeat(31));
    app.patch(&uri)
        .bearer(&alice)
        .body(
            "application/json-patch+json",
            json!([{"op": "add", "path": path, "value": {"c": 1}}]).to_string(),
        )
        .send()
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "document-too-deep");
    let small = app
        .put(&uri)
        .bearer(&alice)
        .json(&json!({"a": "x".repeat(40 * 1024)}))
        .send()
        .await;
    assert_eq!(small.version(), 2);
    app.patch(&uri)
        .bearer(&alice)
        .json(&json!({"b": "y".repeat(30 * 1024)}))
        .send()
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "document-too-large");

    assert_eq!(app.get(&uri).bearer(&alice).send().await.version(), 2);
}

#[sqlx::test]
async fn metadata_write_permissions(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let plain_owner = token(&app, "alice", false, &[("lobby", &["join"])]);
    let id = create_id(&app, &plain_owner).await;
    join(&app, &plain_owner, "lobby", &id).await;
    let uri = metadata_uri(&id);
    let write = |token: String, key: &'static str| {
        let app = &app;
        let uri = uri.clone();
        async move {
            app.patch(&uri)
                .bearer(&token)
                .json(&json!({ key: true }))
                .send()
                .await
        }
    };

    // The owner without own_metadata may read but not write.
    write(plain_owner.clone(), "owner")
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    app.put(&uri)
        .bearer(&plain_owner)
        .json(&json!({}))
        .send()
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        app.get(&uri).bearer(&plain_owner).send().await.status,
        StatusCode::OK
    );

    let owner = write(token(&app, "alice", true, &[]), "owner").await;
    assert_eq!(owner.status, StatusCode::OK, "{owner:?}");
    assert_eq!(owner.version(), 1);

    let moderator = write(
        token(&app, "mod", false, &[("lobby", &["read", "moderate"])]),
        "moderator",
    )
    .await;
    assert_eq!(moderator.status, StatusCode::OK, "{moderator:?}");
    assert_eq!(moderator.version(), 2);

    let admin = write(app.admin(), "admin").await;
    assert_eq!(admin.status, StatusCode::OK, "{admin:?}");
    assert_eq!(admin.version(), 3);

    // Seeing it is not enough to write it, even with own_metadata.
    write(token(&app, "bob", true, &[("lobby", &["read"])]), "reader")
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    // Moderating another room gives nothing here.
    write(
        token(&app, "carol", true, &[("elsewhere", &["read", "moderate"])]),
        "other",
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    write(token(&app, "mallory", true, &[]), "stranger")
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");

    let read = app.get(&uri).bearer(&plain_owner).send().await;
    assert_eq!(read.version(), 3);
    assert_eq!(
        read.json(),
        json!({"owner": true, "moderator": true, "admin": true})
    );
}

/// SPEC §6: `moderate` on a room lets one "write others' connection metadata
/// in the room"; it should not also need `read` to find the connection.
#[sqlx::test]
async fn moderator_without_read_may_write_metadata(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join"])]);
    let id = create_id(&app, &alice).await;
    join(&app, &alice, "lobby", &id).await;

    let moderator = app.token_for("mod", &[("lobby", &["moderate"])]);
    let response = app
        .patch(&metadata_uri(&id))
        .bearer(&moderator)
        .json(&json!({"muted": true}))
        .send()
        .await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    assert_eq!(response.version(), 1);
    assert_eq!(response.json(), json!({"muted": true}));
}

#[sqlx::test]
async fn concurrent_merges_into_connection_metadata_keep_every_key(pool: PgPool) {
    const WRITERS: usize = 40;
    let app = TestApp::new(pool).await;
    let alice = token(&app, "alice", true, &[]);
    let created = create(&app, &alice, Some(json!({"metadata": {}}))).await;
    assert_eq!(created["version"], 1);
    let uri = metadata_uri(created["id"].as_str().unwrap());

    let writes = (0..WRITERS).map(|i| {
        app.patch(&uri)
            .bearer(&alice)
            .json(&json!({ format!("key{i}"): i }))
            .send()
    });
    let mut versions = BTreeSet::new();
    for response in join_all(writes).await {
        assert_eq!(response.status, StatusCode::OK, "{response:?}");
        versions.insert(response.version());
    }
    assert_eq!(
        versions,
        (2..=WRITERS as i64 + 1).collect(),
        "every write got its own version"
    );

    let read = app.get(&uri).bearer(&alice).send().await;
    let document = read.json();
    let keys = document.as_object().unwrap();
    assert_eq!(keys.len(), WRITERS, "{document}");
    for i in 0..WRITERS {
        assert_eq!(keys[&format!("key{i}")], json!(i));
    }
    assert_eq!(read.version(), WRITERS as i64 + 1);
}

// --------------------------------------------------------------- listing

#[sqlx::test]
async fn listing_shows_admins_everything_and_others_their_own(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("*", &["join", "read"])]);
    let bob = app.token_for("bob", &[("*", &["join", "read"])]);
    let a1 = create_id(&app, &alice).await;
    let a2 = create_id(&app, &alice).await;
    let b1 = create_id(&app, &bob).await;
    join(&app, &alice, "lobby", &a1).await;
    join(&app, &bob, "lobby", &b1).await;
    join(&app, &alice, "team:1", &a2).await;

    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    let list = |token: &String, query: &str| {
        let app = &app;
        let uri = format!("{CONNECTIONS}{query}");
        let token = token.clone();
        async move {
            let response = app.get(&uri).bearer(&token).send().await;
            assert_eq!(response.status, StatusCode::OK, "{uri}: {response:?}");
            response.json()
        }
    };

    let all = list(&app.admin(), "").await;
    assert_eq!(
        sorted(ids_of(&all)),
        sorted(vec![a1.clone(), a2.clone(), b1.clone()])
    );
    assert_eq!(all["next_cursor"], Value::Null);
    let first = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["id"] == a1.as_str())
        .unwrap();
    assert_eq!(first["owner"], "alice");
    assert_eq!(first["rooms"], json!(["lobby"]));
    assert_eq!(first["version"], 0);
    assert!(first["expires_at"].is_string() && first["created_at"].is_string());

    let alices = list(&alice, "").await;
    assert_eq!(
        sorted(ids_of(&alices)),
        sorted(vec![a1.clone(), a2.clone()])
    );
    assert_eq!(ids_of(&list(&bob, "").await), vec![b1.clone()]);
    let nobody = app.token_for("nobody", &[]);
    assert_eq!(list(&nobody, "").await["items"], json!([]));

    // The room filter, for an admin and for an owner.
    assert_eq!(
        sorted(ids_of(&list(&app.admin(), "?room=lobby").await)),
        sorted(vec![a1.clone(), b1.clone()])
    );
    assert_eq!(ids_of(&list(&alice, "?room=lobby").await), vec![a1.clone()]);
    assert_eq!(
        ids_of(&list(&alice, "?room=team:1").await),
        vec![a2.clone()]
    );
    assert_eq!(list(&bob, "?room=team:1").await["items"], json!([]));
    assert_eq!(list(&app.admin(), "?room=empty").await["items"], json!([]));

    app.get(&format!("{CONNECTIONS}?room=-bad"))
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-room-id");
    for limit in ["0", "501"] {
        app.get(&format!("{CONNECTIONS}?limit={limit}"))
            .bearer(&alice)
            .send()
            .await
            .assert_problem(StatusCode::BAD_REQUEST, "invalid-limit");
    }
}

#[sqlx::test]
async fn listing_pages_visit_each_connection_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join"])]);
    let mut created = Vec::new();
    for _ in 0..5 {
        let id = create_id(&app, &alice).await;
        join(&app, &alice, "lobby", &id).await;
        created.push(id);
    }
    created.sort();
    // Someone else's connection is not on alice's pages.
    create_id(&app, &app.token_for("bob", &[])).await;

    for (token, query) in [
        (alice.clone(), ""),
        (alice.clone(), "&room=lobby"),
        (app.admin(), "&room=lobby"),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let uri = match &cursor {
                None => format!("{CONNECTIONS}?limit=2{query}"),
                Some(cursor) => format!("{CONNECTIONS}?limit=2{query}&cursor={cursor}"),
            };
            let response = app.get(&uri).bearer(&token).send().await;
            assert_eq!(response.status, StatusCode::OK, "{uri}: {response:?}");
            let page = response.json();
            let ids = ids_of(&page);
            assert!(ids.len() <= 2, "{page}");
            seen.extend(ids);
            pages += 1;
            assert!(pages <= 5, "paging does not end: {seen:?}");
            match page["next_cursor"].as_str() {
                Some(next) => {
                    assert!(
                        next.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                        "cursor {next} is URL-safe"
                    );
                    cursor = Some(next.to_owned());
                }
                None => break,
            }
        }
        assert_eq!(pages, 3, "{query}: 2 + 2 + 1");
        assert_eq!(seen, created, "{query}: each once, in id order");
    }

    // The admin's unfiltered listing pages over everyone's: 6 in all.
    let mut total = 0;
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            None => format!("{CONNECTIONS}?limit=4"),
            Some(cursor) => format!("{CONNECTIONS}?limit=4&cursor={cursor}"),
        };
        let page = app.get(&uri).bearer(&app.admin()).send().await.json();
        total += ids_of(&page).len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(total, 6);

    for cursor in ["!!", "%FF%FE", "gA"] {
        app.get(&format!("{CONNECTIONS}?cursor={cursor}"))
            .bearer(&alice)
            .send()
            .await
            .assert_problem(StatusCode::BAD_REQUEST, "invalid-cursor");
    }
}

#[sqlx::test]
async fn join_answers_201_then_200_and_only_for_the_owner(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alice = app.token_for("alice", &[("lobby", &["join", "read"])]);
    let id = create_id(&app, &alice).await;
    let uri = format!("/v1/rooms/lobby/connections/{id}");

    let first = app.put(&uri).bearer(&alice).send().await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert_eq!(first.json()["occupancy"], 1);
    let again = app.put(&uri).bearer(&alice).send().await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert_eq!(again.json()["occupancy"], 1);
    assert_eq!(
        again.json()["session_id"],
        first.json()["session_id"],
        "same session"
    );

    // Another subject allowed to join the room cannot join alice's connection.
    let bob = app.token_for("bob", &[("lobby", &["join"])]);
    app.put(&uri)
        .bearer(&bob)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "connection-not-found");
    // Without `join` on the room, even the owner is refused.
    app.put(&format!("/v1/rooms/elsewhere/connections/{id}"))
        .bearer(&alice)
        .send()
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");

    let left = app.delete(&uri).bearer(&alice).send().await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{left:?}");
    assert_eq!(occupancy(&app, "lobby").await, 0);
    let envelope = app.get(&conn_uri(&id)).bearer(&alice).send().await.json();
    assert_eq!(envelope["rooms"], json!([]));
}

#[sqlx::test]
async fn concurrent_creates_never_exceed_the_quota(pool: PgPool) {
    let mut settings = helpers::test_settings();
    settings.presence.max_connections_per_subject = 3;
    let app = TestApp::with_settings(pool, settings).await;
    let alice = app.token_for("alice", &[]);

    let creates = (0..12).map(|_| app.request(Method::POST, CONNECTIONS).bearer(&alice).send());
    let mut created = 0;
    for response in join_all(creates).await {
        match response.status {
            StatusCode::CREATED => created += 1,
            _ => response.assert_problem(StatusCode::TOO_MANY_REQUESTS, "too-many-connections"),
        }
    }
    assert_eq!(created, 3, "exactly the quota was granted");
    let mine = app.get(CONNECTIONS).bearer(&alice).send().await.json();
    assert_eq!(ids_of(&mine).len(), 3);
}
