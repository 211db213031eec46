//! Event streams over a real socket: sync, live delivery across instances,
//! exact replay, tickets, permissions and the end of a stream.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;
use crate::sse::{self, SseStream};

async fn subscribe(base: &str, room: &str, token: &str, extra: &[(&str, &str)]) -> SseStream {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    let (status, stream) = sse::open(&format!("{base}/v1/rooms/{room}/events"), &headers).await;
    assert_eq!(status, StatusCode::OK);
    stream.unwrap()
}

/// Listens, creates an empty room `lobby` and opens an admin stream on it,
/// past its first `sync` (returned too).
async fn lobby_stream(app: &TestApp) -> (String, String, SseStream, sse::Frame) {
    let base = app.listen().await;
    let token = app.admin();
    app.create_room("lobby", json!({})).await;
    let mut stream = subscribe(&base, "lobby", &token, &[]).await;
    let sync = stream.expect("sync").await;
    (base, token, stream, sync)
}

#[sqlx::test]
async fn a_stream_starts_with_sync_then_delivers_changes(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    let token = app.token_for("alice", &[("lobby", &["read", "join"])]);
    app.create_room("lobby", json!({"topic": "a"})).await;

    let mut stream = subscribe(&base, "lobby", &token, &[]).await;
    let sync = stream.expect("sync").await;
    assert_eq!(sync.data["metadata"], json!({"topic": "a"}));
    assert_eq!(sync.data["version"], 1);
    assert_eq!(sync.data["session"], Value::Null);
    assert_eq!(sync.data["occupants"], json!([]));

    app.patch_room("lobby", json!({"n": 1})).await;
    let update = stream.expect("room.metadata.updated").await;
    assert_eq!(update.data["version"], 2);
    assert_eq!(update.data["metadata"], json!({"topic": "a", "n": 1}));
    assert_eq!(update.data["patch"], json!({"n": 1}));

    let conn = app.connect(&token).await;
    app.join(&token, "lobby", &conn).await;
    let started = stream.expect("session.started").await;
    let joined = stream.expect("presence.joined").await;
    assert_eq!(joined.data["connection_id"], conn.as_str());
    assert!(started.data["session_id"].is_string(), "{started:?}");
    let ids = [&sync.id, &update.id, &started.id, &joined.id];
    assert!(
        ids.windows(2).all(|w| w[0] != w[1]),
        "distinct ids: {ids:?}"
    );
}

#[sqlx::test]
async fn changes_through_one_instance_reach_streams_on_another(pool: PgPool) {
    let one = TestApp::new(pool).await;
    let two = one.another_instance().await;
    let base_one = one.listen().await;
    two.listen().await;
    one.create_room("lobby", json!({})).await;
    let token = one.admin();

    let mut stream = subscribe(&base_one, "lobby", &token, &[]).await;
    stream.expect("sync").await;
    for n in 1..=5 {
        two.patch_room("lobby", json!({"n": n})).await;
    }
    for n in 1..=5 {
        let frame = stream.expect("room.metadata.updated").await;
        assert_eq!(frame.data["metadata"]["n"], n, "in order");
    }
}

#[sqlx::test]
async fn reconnecting_with_last_event_id_replays_exactly_what_was_missed(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (base, token, mut stream, _) = lobby_stream(&app).await;
    app.patch_room("lobby", json!({"n": 1})).await;
    let seen = stream.expect("room.metadata.updated").await;
    drop(stream);

    app.patch_room("lobby", json!({"n": 2})).await;
    app.patch_room("lobby", json!({"n": 3})).await;

    let mut resumed = subscribe(&base, "lobby", &token, &[("last-event-id", &seen.id)]).await;
    let second = resumed.expect("room.metadata.updated").await;
    let third = resumed.expect("room.metadata.updated").await;
    assert_eq!(
        (
            second.data["version"].clone(),
            third.data["version"].clone()
        ),
        (json!(3), json!(4))
    );
    resumed.assert_quiet(Duration::from_millis(300)).await;

    // The query parameter works the same way, for clients that cannot set headers.
    let url = format!("{base}/v1/rooms/lobby/events?last_event_id={}", second.id);
    let auth = format!("Bearer {token}");
    let (_, by_query) = sse::open(&url, &[("authorization", &auth)]).await;
    let replayed = by_query.unwrap().expect("room.metadata.updated").await;
    assert_eq!(replayed.id, third.id);
}

#[sqlx::test]
async fn an_unusable_last_event_id_yields_a_sync(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    let token = app.admin();
    app.create_room("lobby", json!({"a": 1})).await;
    let mut first = subscribe(&base, "lobby", &token, &[]).await;
    let sync = first.expect("sync").await;
    let (epoch, position) = sync.id.split_once('-').unwrap();
    let other_epoch = format!("{}-{position}", if epoch == "0" { "1" } else { "0" });
    let future = format!("{epoch}-99999999999999-0");
    for id in ["garbage", "1-2", other_epoch.as_str(), future.as_str()] {
        let mut stream = subscribe(&base, "lobby", &token, &[("last-event-id", id)]).await;
        let frame = stream.expect("sync").await;
        assert_eq!(frame.data["metadata"], json!({"a": 1}), "{id}");
    }
}

#[sqlx::test]
async fn a_trimmed_history_yields_a_sync(pool: PgPool) {
    let mut settings = crate::helpers::test_settings();
    settings.presence.event_history = 3;
    let app = TestApp::with_settings(pool, settings).await;
    let (base, token, stream, sync) = lobby_stream(&app).await;
    drop(stream);
    // Far more than the history keeps (MAXLEN ~ trims whole nodes: write plenty).
    for n in 0..300 {
        app.patch_room("lobby", json!({"n": n})).await;
    }
    let mut resumed = subscribe(&base, "lobby", &token, &[("last-event-id", &sync.id)]).await;
    let frame = resumed.expect("sync").await;
    assert_eq!(frame.data["metadata"]["n"], 299);
}

#[sqlx::test]
async fn a_lost_history_in_the_same_epoch_yields_a_sync(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (base, token, mut stream, _) = lobby_stream(&app).await;
    app.patch_room("lobby", json!({"n": 1})).await;
    let seen = stream.expect("room.metadata.updated").await;
    drop(stream);
    app.patch_room("lobby", json!({"n": 2})).await;
    app.patch_room("lobby", json!({"n": 3})).await;
    // What a Redis Cluster master that restarts empty does to a room: its
    // slot's keys are gone while the epoch key, on another master, lives on.
    let mut redis = app.state.redis.clone();
    let keys = &app.state.redis_keys;
    redis::cmd("DEL")
        .arg(keys.room_events("lobby"))
        .arg(keys.room_published_seq("lobby"))
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    app.patch_room("lobby", json!({"n": 4})).await;

    // The new history starts after the client's position: n = 2 and 3 are
    // gone, so a replay would skip them without a word.
    let mut resumed = subscribe(&base, "lobby", &token, &[("last-event-id", &seen.id)]).await;
    let frame = resumed.expect("sync").await;
    assert_eq!(frame.data["metadata"]["n"], 4);
}

#[sqlx::test]
async fn tickets_open_one_stream_each(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    app.create_room("lobby", json!({})).await;
    let reader = app.token_for("alice", &[("lobby", &["read"])]);
    let created = app.post("/v1/stream-tickets").bearer(&reader).send().await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let ticket = created.json()["ticket"].as_str().unwrap().to_owned();
    assert!(
        ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );

    let url = format!("{base}/v1/rooms/lobby/events?ticket={ticket}");
    let (status, stream) = sse::open(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    stream.unwrap().expect("sync").await;

    let (spent, _) = sse::open(&url, &[]).await;
    assert_eq!(spent, StatusCode::UNAUTHORIZED, "single use");
    let (forged, _) = sse::open(&format!("{base}/v1/rooms/lobby/events?ticket=forged"), &[]).await;
    assert_eq!(forged, StatusCode::UNAUTHORIZED);

    // A ticket carries its token's permissions, no more.
    let ticket = app
        .post("/v1/stream-tickets")
        .bearer(&reader)
        .send()
        .await
        .json()["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    app.create_room("other", json!({})).await;
    let (denied, _) = sse::open(
        &format!("{base}/v1/rooms/other/events?ticket={ticket}"),
        &[],
    )
    .await;
    assert_eq!(denied, StatusCode::FORBIDDEN);
}

#[sqlx::test]
async fn the_token_cookie_authorizes_streams(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    app.create_room("lobby", json!({})).await;
    let token = app.token_for("alice", &[("lobby", &["read"])]);
    let cookie = format!("theme=dark; metacast_token={token}");
    let (status, stream) = sse::open(
        &format!("{base}/v1/rooms/lobby/events"),
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    stream.unwrap().expect("sync").await;
}

#[sqlx::test]
async fn streams_check_authentication_permission_and_existence(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    app.create_room("lobby", json!({})).await;
    let url = format!("{base}/v1/rooms/lobby/events");
    assert_eq!(sse::open(&url, &[]).await.0, StatusCode::UNAUTHORIZED);
    let stranger = format!("Bearer {}", app.token_for("eve", &[("other", &["read"])]));
    assert_eq!(
        sse::open(&url, &[("authorization", &stranger)]).await.0,
        StatusCode::FORBIDDEN
    );
    let admin = format!("Bearer {}", app.admin());
    let missing = format!("{base}/v1/rooms/nowhere/events");
    assert_eq!(
        sse::open(&missing, &[("authorization", &admin)]).await.0,
        StatusCode::NOT_FOUND
    );
}

#[sqlx::test]
async fn deleting_the_room_ends_its_streams_after_room_deleted(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    let token = app.admin();
    app.create_room("lobby", json!({})).await;
    let conn = app.connect(&token).await;
    app.join(&token, "lobby", &conn).await;
    let mut stream = subscribe(&base, "lobby", &token, &[]).await;
    let sync = stream.expect("sync").await;
    assert_eq!(sync.data["occupants"][0]["id"], conn.as_str());
    assert_eq!(sync.data["session"]["occupancy"], 1);

    app.delete("/v1/rooms/lobby").bearer(&token).send().await;
    let left = stream.expect("presence.left").await;
    assert_eq!(left.data["reason"], "evicted");
    stream.expect("session.ended").await;
    stream.expect("room.deleted").await;
    assert!(stream.next().await.is_none(), "the stream ends");
}

#[sqlx::test]
async fn a_stream_ends_when_its_token_expires(pool: PgPool) {
    use metacast::auth::{MetacastClaim, TokenRequest};

    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    app.create_room("lobby", json!({})).await;
    let token = app
        .state
        .jwt_keys
        .mint(&TokenRequest {
            subject: "brief".into(),
            claim: MetacastClaim {
                admin: true,
                ..MetacastClaim::default()
            },
            ttl: Duration::from_secs(2),
        })
        .unwrap();
    let mut stream = subscribe(&base, "lobby", &token, &[]).await;
    stream.expect("sync").await;
    assert!(
        stream.next().await.is_none(),
        "the stream ends once the token has expired"
    );
}

#[sqlx::test]
async fn an_idle_stream_gets_keep_alive_comments(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (_, _, mut stream, _) = lobby_stream(&app).await;
    // SPEC: a comment at least every 15 s; allow for a busy machine.
    let comment = stream.expect_comment(Duration::from_secs(25)).await;
    assert_eq!(comment, ":\n\n");
    app.patch_room("lobby", json!({"after": "keep-alive"}))
        .await;
    stream.expect("room.metadata.updated").await;
}

#[sqlx::test]
async fn shutdown_ends_open_streams(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (_, _, mut stream, _) = lobby_stream(&app).await;
    app.state.lifecycle.stop();
    assert!(stream.next().await.is_none(), "the stream ends on shutdown");
}

fn lag_syncs(app: &TestApp) -> u64 {
    app.state
        .metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(r#"metacast_stream_syncs_total{reason="lag"} "#))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[sqlx::test]
async fn a_slow_subscriber_gets_a_sync_instead_of_an_unbounded_backlog(pool: PgPool) {
    use futures_util::StreamExt;
    use metacast::events::hub::FEED_CAPACITY;
    use metacast::events::subscriber::{self, Start};
    use metacast::events::{self, Event, EventKind};

    let app = TestApp::new(pool).await;
    // The wake-up subscription that feeds this instance's hub.
    app.listen().await;
    app.create_room("lobby", json!({})).await;
    let before = lag_syncs(&app);
    // A subscriber that reads nothing while the room produces far more than
    // its buffers hold.
    let frames = subscriber::open(&app.state, "lobby", Start::Sync)
        .await
        .unwrap();
    let mut frames = std::pin::pin!(frames);
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut received = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), frames.next()).await {
        received += 1;
    }
    assert!(
        lag_syncs(&app) > before,
        "the lagging subscriber was resynced"
    );
    assert!(
        received < 1_000,
        "it got a snapshot in place of the backlog ({received} frames, feed buffer {FEED_CAPACITY})"
    );
}

/// A replay is read a page at a time; one longer than several pages, with
/// writes landing while it is read, arrives whole, in order, once each.
#[sqlx::test]
async fn a_replay_of_many_pages_arrives_whole_and_in_order(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (base, token, stream, sync) = lobby_stream(&app).await;
    drop(stream);
    for n in 0..700 {
        app.patch_room("lobby", json!({"n": n})).await;
    }
    let mut resumed = subscribe(&base, "lobby", &token, &[("last-event-id", &sync.id)]).await;
    for n in 700..710 {
        app.patch_room("lobby", json!({"n": n})).await;
    }
    for version in 2..=711 {
        let frame = resumed.expect("room.metadata.updated").await;
        assert_eq!(frame.data["version"], version);
    }
    resumed.assert_quiet(Duration::from_millis(300)).await;
}

/// Seen failing before: after a failover rolled the room's stream and
/// sequence back (the epoch surviving), the next write was appended past
/// the gap and a resume from before it replayed on as if nothing was lost.
#[sqlx::test]
async fn events_lost_by_a_rolled_back_redis_are_answered_with_a_sync(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (base, token, mut stream, _) = lobby_stream(&app).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        app.patch_room("lobby", json!({"n": n})).await;
        ids.push(stream.expect("room.metadata.updated").await.id);
    }
    drop(stream);
    app.outbox_drained().await;

    // The failover: the last two events and their sequence are gone.
    let keys = app.state.redis_keys.clone();
    let mut redis = app.state.redis.clone();
    for id in &ids[1..] {
        let (_, entry) = id.split_once('-').unwrap();
        let _: i64 = redis::cmd("XDEL")
            .arg(keys.room_events("lobby"))
            .arg(entry)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let _: i64 = redis::cmd("DECRBY")
        .arg(keys.room_published_seq("lobby"))
        .arg(2)
        .query_async(&mut redis)
        .await
        .unwrap();

    app.patch_room("lobby", json!({"n": 4})).await;
    let mut resumed = subscribe(&base, "lobby", &token, &[("last-event-id", &ids[0])]).await;
    let frame = resumed.expect("sync").await;
    assert_eq!(frame.data["metadata"], json!({"n": 4}));
    assert_eq!(frame.data["version"], 5);
}
