//! The rules a room stream keeps whatever id a client resumes with and
//! however far behind it falls: an id this room's stream never gave out
//! gets a `sync`, and the room's deletion ends the stream.

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;
use crate::sse::{self, SseStream};

async fn subscribe(base: &str, room: &str, token: &str, last_event_id: Option<&str>) -> SseStream {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(id) = last_event_id {
        headers.push(("last-event-id", id));
    }
    let (status, stream) = sse::open(&format!("{base}/v1/rooms/{room}/events"), &headers).await;
    assert_eq!(status, StatusCode::OK);
    stream.unwrap()
}

#[sqlx::test]
async fn an_id_this_room_never_gave_out_gets_a_sync(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    let token = app.admin();
    app.create_room("other", json!({})).await;
    app.create_room("lobby", json!({"a": 1})).await;

    // An id of another room's stream, older than this room's end.
    let mut other = subscribe(&base, "other", &token, None).await;
    other.expect("sync").await;
    app.patch_room("other", json!({"o": 1})).await;
    let foreign = other.expect("room.metadata.updated").await.id;
    let mut lobby = subscribe(&base, "lobby", &token, None).await;
    lobby.expect("sync").await;
    app.patch_room("lobby", json!({"n": 1})).await;
    let real = lobby.expect("room.metadata.updated").await.id;
    app.patch_room("lobby", json!({"n": 2})).await;

    // One made up within this room's range: the epoch and time of a real
    // entry, a sequence no entry has.
    let (prefix, seq) = real.rsplit_once('-').unwrap();
    let made_up = format!("{prefix}-{}", seq.parse::<u64>().unwrap() + 1000);
    for id in [foreign.as_str(), made_up.as_str()] {
        let mut resumed = subscribe(&base, "lobby", &token, Some(id)).await;
        let first = resumed.expect("sync").await;
        assert_eq!(first.data["metadata"], json!({"a": 1, "n": 2}), "{id}");
    }

    // A real id still resumes exactly.
    let mut resumed = subscribe(&base, "lobby", &token, Some(&real)).await;
    let replayed = resumed.expect("room.metadata.updated").await;
    assert_eq!(replayed.data["metadata"]["n"], 2);
}

#[sqlx::test]
async fn a_replayed_deletion_ends_the_stream(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    let token = app.admin();
    app.create_room("lobby", json!({})).await;
    let mut stream = subscribe(&base, "lobby", &token, None).await;
    let sync = stream.expect("sync").await;
    drop(stream);

    app.delete("/v1/rooms/lobby").bearer(&token).send().await;
    // The room comes back (a PUT, or a join that creates it): the old
    // stream's id is still in history, and its replay crosses the deletion.
    app.create_room("lobby", json!({"again": true})).await;
    let mut resumed = subscribe(&base, "lobby", &token, Some(&sync.id)).await;
    resumed.expect("room.deleted").await;
    assert!(
        resumed.next().await.is_none(),
        "the stream ends at room.deleted"
    );
}

#[sqlx::test]
async fn a_stream_that_fell_behind_past_the_deletion_ends(pool: PgPool) {
    use metacast::events::subscriber::{self, Start};
    use metacast::events::{self, Event, EventKind};

    let app = TestApp::new(pool).await;
    // The wake-up subscription that feeds this instance's hub.
    app.listen().await;
    app.create_room("lobby", json!({})).await;
    let frames = subscriber::open(&app.state, "lobby", Start::Sync)
        .await
        .unwrap();
    let mut frames = std::pin::pin!(frames);
    // It reads nothing while the room produces more than its buffer holds,
    // then the room goes.
    for _ in 0..1_000 {
        events::publish(
            &app.state,
            &[Event::new(
                EventKind::RoomCleared,
                "lobby",
                "load",
                json!({}),
            )],
        )
        .await;
    }
    let deleted = app
        .delete("/v1/rooms/lobby")
        .bearer(&app.admin())
        .send()
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut last = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), frames.next()).await {
            Ok(Some(frame)) => last = Some(String::from_utf8_lossy(&frame).into_owned()),
            Ok(None) => break,
            Err(_) => {
                panic!("the stream stays open after its room was deleted; last frame {last:?}")
            }
        }
    }
    let last = last.unwrap();
    assert!(
        last.contains("event: room.deleted")
            || (last.contains("event: sync") && last.contains(r#""metadata":null"#)),
        "{last}"
    );
}
