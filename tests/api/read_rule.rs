//! SPEC §6: a room's content (metadata, session, occupants, its events)
//! reaches a caller by any path only with `read` on that room; `join` alone
//! lets a client be present, not read. These follow the paths that return
//! room content without being a room endpoint: a connection's own stream,
//! the join answer, a connection's room list.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;
use crate::sse::{self, SseStream};

const SECRET: &str = "the-secret-topic";

async fn connection_stream(base: &str, id: &str, token: &str) -> SseStream {
    let auth = format!("Bearer {token}");
    let (status, stream) = sse::open(
        &format!("{base}/v1/connections/{id}/events"),
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    stream.unwrap()
}

/// A room `secret` with a secret in its metadata, its session metadata and
/// an occupant's metadata, occupied by someone else.
async fn secret_room(app: &TestApp) {
    app.create_room("secret", json!({ "topic": SECRET })).await;
    let other = app.token_for("bob", &[("secret", &["join"])]);
    let bob = app
        .post("/v1/connections")
        .bearer(&other)
        .json(&json!({ "metadata": { "name": SECRET } }))
        .send()
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.join(&other, "secret", &bob).await.status,
        StatusCode::CREATED
    );
    let session = app
        .put("/v1/rooms/secret/session/metadata")
        .bearer(&app.admin())
        .json(&json!({ "note": SECRET }))
        .send()
        .await;
    assert_eq!(session.status, StatusCode::OK, "{session:?}");
}

#[sqlx::test]
async fn a_join_grant_does_not_read_the_room_through_a_connection_stream(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    secret_room(&app).await;
    let token = app.token_for(
        "alice",
        &[("secret", &["join"]), ("open", &["join", "read"])],
    );
    let id = app.connect(&token).await;
    assert_eq!(
        app.join(&token, "secret", &id).await.status,
        StatusCode::CREATED
    );
    assert!(app.join(&token, "open", &id).await.status.is_success());

    let mut stream = connection_stream(&base, &id, &token).await;
    let sync = stream.expect("sync").await;
    let text = sync.data.to_string();
    assert!(!text.contains(SECRET), "the sync leaks the room: {text}");
    assert!(sync.data["rooms"]["open"].is_object(), "{text}");
    assert!(sync.data["rooms"].get("secret").is_none(), "{text}");
    // The connection's own room list is its owner's to see.
    assert_eq!(sync.data["connection"]["rooms"], json!(["open", "secret"]));

    // The room's changes do not reach it; its own membership does, without
    // the room's occupancy.
    app.patch_room("secret", json!({ "topic": format!("{SECRET}-2") }))
        .await;
    app.patch_room("open", json!({ "topic": "visible" })).await;
    let open = stream.expect("room.metadata.updated").await;
    assert_eq!(open.data["room"], "open");
    let left = app
        .delete(&format!("/v1/rooms/secret/connections/{id}"))
        .bearer(&token)
        .send()
        .await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{left:?}");
    let own = stream.expect("presence.left").await;
    assert_eq!(own.data["room"], "secret");
    assert_eq!(own.data["connection_id"], id.as_str());
    assert!(own.data.get("occupancy").is_none(), "{own:?}");
    stream.assert_quiet(Duration::from_millis(500)).await;
}

#[sqlx::test]
async fn a_join_answer_tells_a_joiner_without_read_nothing_of_the_room(pool: PgPool) {
    let app = TestApp::new(pool).await;
    secret_room(&app).await;
    let token = app.token_for("alice", &[("secret", &["join"])]);
    let id = app.connect(&token).await;
    let joined = app.join(&token, "secret", &id).await;
    assert_eq!(joined.status, StatusCode::CREATED, "{joined:?}");
    let body = joined.json();
    assert_eq!(body["room"], "secret");
    assert_eq!(body["connection_id"], id.as_str());
    assert!(body["occupancy"].is_null(), "{body}");
    assert!(body["session_id"].is_null(), "{body}");

    // With read it is all there.
    let reader = app.token_for("carol", &[("secret", &["join", "read"])]);
    let id = app.connect(&reader).await;
    let body = app.join(&reader, "secret", &id).await.json();
    assert_eq!(body["occupancy"], 3);
    assert!(body["session_id"].is_string(), "{body}");
}

#[sqlx::test]
async fn a_connection_shows_only_the_rooms_its_viewer_may_read(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let owner = app.token_for("alice", &[("*", &["join"])]);
    let id = app.connect(&owner).await;
    for room in ["lobby", "secret"] {
        assert!(app.join(&owner, room, &id).await.status.is_success());
    }
    // A reader of lobby sees the connection, but not that it is in secret.
    let lobby_reader = app.token_for("bob", &[("lobby", &["read"])]);
    let seen = app
        .get(&format!("/v1/connections/{id}"))
        .bearer(&lobby_reader)
        .send()
        .await;
    assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
    assert_eq!(seen.json()["rooms"], json!(["lobby"]));
    // Its owner sees every room it is in.
    let own = app
        .get(&format!("/v1/connections/{id}"))
        .bearer(&owner)
        .send()
        .await;
    assert_eq!(own.json()["rooms"], json!(["lobby", "secret"]));
}
