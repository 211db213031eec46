//! Redis stopped and restarted empty, under a running instance.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::{Api, Frame, Next, Stream};
use crate::harness::{PostgresServer, RedisServer};
use crate::history::room_history;
use crate::instance::InProcess;

const META: &str = "/v1/rooms/lobby/metadata";
/// Generous: the repairs run every second or so; a busy machine is slower.
const WAIT: Duration = Duration::from_secs(20);

async fn join(api: &Api, room: &str, conn: &str) -> crate::client::Response {
    api.send(
        Method::PUT,
        &format!("/v1/rooms/{room}/connections/{conn}"),
        &[],
        None,
    )
    .await
}

/// The room as a stream client knows it: what `sync` said, then each event.
#[derive(Debug, Default)]
struct View {
    version: i64,
    session: Option<String>,
    occupants: Vec<String>,
    syncs: usize,
}

impl View {
    fn apply(&mut self, frame: &Frame) {
        let data = &frame.data;
        match frame.event.as_str() {
            "sync" => {
                self.syncs += 1;
                self.version = data["version"].as_i64().unwrap_or(0);
                self.session = data["session"]["id"].as_str().map(str::to_owned);
                self.occupants = data["occupants"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["id"].as_str().unwrap().to_owned())
                    .collect();
            }
            "room.metadata.updated" => {
                // Metadata events carry their version: an older one than the
                // client holds is what a sync already covered.
                self.version = self.version.max(data["version"].as_i64().unwrap());
            }
            "session.started" => self.session = Some(id(data, "session_id")),
            "session.ended" if self.session.as_deref() == data["session_id"].as_str() => {
                self.session = None;
            }
            "presence.joined" => self.occupants.push(id(data, "connection_id")),
            "presence.left" => {
                let gone = id(data, "connection_id");
                self.occupants.retain(|o| *o != gone);
            }
            _ => {}
        }
    }
}

fn id(data: &Value, field: &str) -> String {
    data[field].as_str().unwrap().to_owned()
}

/// Reads `stream` into `view` until `done` holds; fails after [`WAIT`].
async fn follow(stream: &mut Stream, view: &mut View, done: impl Fn(&View) -> bool) -> Vec<Frame> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while !done(view) {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.next_within(left).await {
            Next::Frame(frame) => {
                view.apply(&frame);
                seen.push(frame);
            }
            other => panic!("{other:?} before the view was done: {view:?}, after {seen:#?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_room_metadata_and_recovers_presence() {
    let pg = PostgresServer::start().await;
    let mut redis = RedisServer::start().await;
    let app = InProcess::start(&pg.url("metacast"), &redis.url()).await;
    let api = &app.api;

    // Before: a room with one occupant, its session, and a subscriber.
    assert_eq!(
        api.put(META, &json!({"topic": "before"})).await.status,
        StatusCode::CREATED
    );
    let conn = api.connect(30).await;
    let joined = join(api, "lobby", &conn).await;
    assert_eq!(joined.status, StatusCode::CREATED, "{joined:?}");
    let session = joined.json()["session_id"].as_str().unwrap().to_owned();
    let mut stream = api.stream("/v1/rooms/lobby/events", None).await.unwrap();
    let mut view = View::default();
    follow(&mut stream, &mut view, |v| v.syncs == 1).await;
    assert_eq!((view.version, view.occupants.len()), (1, 1), "{view:?}");

    redis.kill();

    // Room metadata lives in Postgres: reads and writes go on.
    let read = api.get(META).await;
    assert_eq!(
        (read.status, read.json()),
        (StatusCode::OK, json!({"topic": "before"}))
    );
    let patched = api.patch(META, &json!({"during": 1})).await;
    assert_eq!(
        (patched.status, patched.version()),
        (StatusCode::OK, 2),
        "{patched:?}"
    );
    let replaced = api
        .put(META, &json!({"topic": "during", "during": 2}))
        .await;
    assert_eq!(
        (replaced.status, replaced.version()),
        (StatusCode::OK, 3),
        "{replaced:?}"
    );

    // Presence and connections live in Redis: 503 with Retry-After, fast.
    api.post("/v1/connections", &json!({}))
        .await
        .assert_outage("redis-unavailable");
    api.send(
        Method::POST,
        &format!("/v1/connections/{conn}/heartbeat"),
        &[],
        None,
    )
    .await
    .assert_outage("redis-unavailable");
    join(api, "lobby", &conn)
        .await
        .assert_outage("redis-unavailable");
    api.get("/v1/rooms/lobby/connections")
        .await
        .assert_outage("redis-unavailable");
    api.get(&format!("/v1/connections/{conn}"))
        .await
        .assert_outage("redis-unavailable");
    api.get("/readyz").await.assert_outage("redis-unavailable");
    let refused = api
        .stream("/v1/rooms/lobby/events", None)
        .await
        .err()
        .unwrap();
    refused.assert_outage("redis-unavailable");

    // Long enough for the outage's outbox rows to be the relay's to publish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.restart().await;
    api.poll_until("/readyz", WAIT, |r| r.status == StatusCode::OK)
        .await;
    // A write right after the return: its inline publish must not overtake
    // the events still waiting in the outbox.
    let after = api.patch(META, &json!({"after": 4})).await;
    assert_eq!(
        (after.status, after.version()),
        (StatusCode::OK, 4),
        "{after:?}"
    );

    // The open stream learns that history was lost before anything else,
    // then follows the room: every acknowledged write, the session that
    // nobody is left in ended by the reconciler.
    let first = stream.expect_within(WAIT).await;
    assert_eq!(first.event, "sync", "history was lost: {first:?}");
    view.apply(&first);
    follow(&mut stream, &mut view, |v| {
        v.version == 4 && v.session.is_none()
    })
    .await;
    assert!(view.occupants.is_empty(), "{view:?}");

    // Every write acknowledged during the outage reaches the room's event
    // history after Redis returned, once each and in order (the outbox
    // relay publishes them after a couple of seconds).
    let deadline = Instant::now() + WAIT;
    let versions = loop {
        let versions: Vec<i64> = room_history(&app.state, "lobby")
            .await
            .into_iter()
            .filter(|(kind, _)| kind == "room.metadata.updated")
            .map(|(_, data)| data["version"].as_i64().unwrap())
            .collect();
        if versions.contains(&4) || Instant::now() > deadline {
            break versions;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(versions, [2, 3, 4], "in the event history");

    // No session stays open in the emptied room; its history has it ended.
    api.poll_until("/v1/rooms/lobby/session", WAIT, |r| {
        r.status == StatusCode::NOT_FOUND
    })
    .await;
    let room = api.get("/v1/rooms/lobby").await.json();
    assert_eq!(
        (room["occupancy"].clone(), room["session"].clone()),
        (json!(0), Value::Null)
    );
    let sessions = api.get("/v1/rooms/lobby/sessions").await.json();
    assert_eq!(sessions["items"][0]["id"], session.as_str());
    assert!(sessions["items"][0]["ended_at"].is_string(), "{sessions}");

    // The connection Redis forgot is cleanly gone: its client learns it
    // from its next heartbeat and starts over; presence works again.
    let heartbeat = api
        .send(
            Method::POST,
            &format!("/v1/connections/{conn}/heartbeat"),
            &[],
            None,
        )
        .await;
    assert_eq!(heartbeat.status, StatusCode::NOT_FOUND, "{heartbeat:?}");
    let again = api.connect(30).await;
    let rejoined = join(api, "lobby", &again).await;
    assert_eq!(rejoined.status, StatusCode::CREATED, "{rejoined:?}");
    let new_session = rejoined.json()["session_id"].clone();
    assert_ne!(new_session, session.as_str(), "a new session");
    let frames = follow(&mut stream, &mut view, |v| v.occupants == [again.clone()]).await;
    // The join's session start comes right before it (the stream may still
    // carry relayed events that a sync already covered before them).
    let started = frames
        .iter()
        .position(|f| f.event == "session.started" && f.data["session_id"] == new_session);
    assert_eq!(started, Some(frames.len() - 2), "{frames:#?}");
    assert_eq!(api.get("/readyz").await.status, StatusCode::OK);
}
