//! metacast SIGKILLed in the middle of concurrent writes, then restarted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::client::{Api, Frame, Next, Outcome, Stream};
use crate::harness::{PostgresServer, RedisServer, free_port};
use crate::instance::{Process, environment};

const ROOMS: usize = 3;
const WRITERS_PER_ROOM: usize = 3;
/// Acknowledged writes before the kill: enough that writes are surely in
/// flight at that moment.
const ACKS_BEFORE_KILL: usize = 60;
/// Generous: the relay publishes what the crash left behind after ~3 s.
const WAIT: Duration = Duration::from_secs(30);

/// An acknowledged write: the key it set and the version it was told.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    version: i64,
}

type Acks = Arc<Mutex<BTreeMap<usize, Vec<Ack>>>>;

fn room(index: usize) -> String {
    format!("room-{index}")
}

/// PATCHes distinct keys into `room` until the server is gone.
async fn write_until_killed(api: Api, index: usize, writer: usize, acks: Acks) {
    let path = format!("/v1/rooms/{}/metadata", room(index));
    for n in 0.. {
        let key = format!("w{writer}-{n}");
        let body = json!({ key.clone(): n });
        match api.try_send(Method::PATCH, &path, &[], Some(&body)).await {
            Outcome::Answered(response) => {
                assert_eq!(response.status, StatusCode::OK, "{response:?}");
                let version = response.version();
                acks.lock()
                    .unwrap()
                    .entry(index)
                    .or_default()
                    .push(Ack { key, version });
            }
            Outcome::Unreachable(_) => return,
            Outcome::TimedOut => panic!("{path} did not answer"),
        }
    }
}

/// Every frame of `stream` until it ends.
async fn read_until_ended(mut stream: Stream) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        match stream.next_within(WAIT).await {
            Next::Frame(frame) => frames.push(frame),
            Next::Ended => return frames,
            Next::Quiet => panic!("the stream neither ended nor spoke: {frames:?}"),
        }
    }
}

fn metadata_version(frame: &Frame) -> Option<i64> {
    (frame.event == "room.metadata.updated").then(|| frame.data["version"].as_i64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_write_loses_no_acknowledged_write_nor_event() {
    let pg = PostgresServer::start().await;
    let redis = RedisServer::start().await;
    let listen = ([127, 0, 0, 1], free_port()).into();
    let mut server = Process::start(environment(&pg.url("metacast"), &redis.url(), listen)).await;
    let api = server.api.clone();

    let mut readers = Vec::new();
    for index in 0..ROOMS {
        let path = format!("/v1/rooms/{}/metadata", room(index));
        assert_eq!(api.put(&path, &json!({})).await.status, StatusCode::CREATED);
        let stream = api
            .stream(&format!("/v1/rooms/{}/events", room(index)), None)
            .await
            .unwrap();
        readers.push(tokio::spawn(read_until_ended(stream)));
    }

    let acks: Acks = Arc::default();
    let writers: Vec<_> = (0..ROOMS * WRITERS_PER_ROOM)
        .map(|writer| {
            tokio::spawn(write_until_killed(
                api.clone(),
                writer % ROOMS,
                writer,
                acks.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while acks.lock().unwrap().values().map(Vec::len).sum::<usize>() < ACKS_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "writes are not being acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.sigkill().await;
    for writer in writers {
        writer.await.unwrap();
    }
    let mut before_kill = Vec::new();
    for reader in readers {
        before_kill.push(reader.await.unwrap());
    }

    server.restart().await;
    let acks = acks.lock().unwrap().clone();
    let mut resumed_streams = Vec::new();
    for index in 0..ROOMS {
        let room = room(index);
        let acked = &acks[&index];

        // Every acknowledged write is there (and writes committed just
        // before the kill may be too: the client cannot know).
        let read = server.api.get(&format!("/v1/rooms/{room}/metadata")).await;
        let (document, last) = (read.json(), read.version());
        for ack in acked {
            assert!(document.get(&ack.key).is_some(), "{room}: {ack:?} lost");
            assert!(ack.version <= last, "{room}: {ack:?} after {last}");
        }

        // Every version's event is delivered, exactly once: what the stream
        // got before the kill, then a resume from its last id.
        let seen = &before_kill[index];
        let last_id = &seen.last().expect("at least the sync").id;
        let mut resumed = server
            .api
            .stream(&format!("/v1/rooms/{room}/events"), Some(last_id))
            .await
            .unwrap();
        let mut versions: Vec<i64> = seen.iter().filter_map(metadata_version).collect();
        while versions.last() != Some(&last) {
            let frame = resumed.expect_within(WAIT).await;
            assert_ne!(frame.event, "sync", "{room}: history covers the resume");
            versions.extend(metadata_version(&frame));
        }
        let expected: Vec<i64> = (2..=last).collect();
        assert_eq!(versions, expected, "{room}: each version once, in order");
        resumed_streams.push(resumed);
    }
    // Nothing arrives twice later either: give the relay, which re-checks
    // every row the killed process never marked published, a few rounds.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (index, mut resumed) in resumed_streams.into_iter().enumerate() {
        if let Next::Frame(frame) = resumed.next_within(Duration::from_millis(200)).await {
            panic!("{}: an extra event {frame:?}", room(index));
        }
    }
}
