//! No client input costs others more than a bound: what a request makes
//! Redis do is counted (MONITOR on every node, the test's own key prefix)
//! and must not grow with what the caller does not get back — other
//! people's connections in a crowded room.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, redis_nodes, test_settings};
use crate::sse;

/// Commands a client sent to Redis under one key prefix; what scripts run
/// inside Redis (`[0 lua]` lines) is part of the one command that ran them.
struct CommandCounter {
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CommandCounter {
    fn start(app: &TestApp) -> Self {
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let prefix = app.state.settings.redis_prefix.clone();
        for url in redis_nodes(&app.state.settings).unwrap() {
            let address = url.trim_start_matches("redis://").trim_end_matches('/');
            let mut socket = TcpStream::connect(address).unwrap();
            socket.write_all(b"MONITOR\r\n").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut reader = BufReader::new(socket);
            let mut ok = String::new();
            reader.read_line(&mut ok).unwrap();
            assert!(ok.starts_with("+OK"), "MONITOR answered {ok:?}");
            let (count, stop, prefix) = (count.clone(), stop.clone(), prefix.clone());
            std::thread::spawn(move || {
                let mut line = String::new();
                while !stop.load(Ordering::Relaxed) {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) => return,
                        Ok(_) if line.contains(&prefix) && !line.contains(" lua]") => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            });
        }
        Self { count, stop }
    }

    /// The commands counted since the last call, once MONITOR caught up.
    async fn take(&self) -> usize {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.count.swap(0, Ordering::Relaxed)
    }
}

impl Drop for CommandCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const CROWD: usize = 200;

/// An app whose room `crowd` holds `CROWD` connections of `bob`.
async fn crowded(pool: PgPool) -> TestApp {
    let mut settings = test_settings();
    settings.presence.max_connections_per_subject = CROWD + 10;
    let app = TestApp::with_settings(pool, settings).await;
    let bob = app.token_for("bob", &[("crowd", &["join"])]);
    for _ in 0..CROWD {
        let id = app.connect(&bob).await;
        assert!(app.join(&bob, "crowd", &id).await.status.is_success());
    }
    app
}

#[sqlx::test]
async fn room_listings_cost_the_page_not_the_room(pool: PgPool) {
    let app = crowded(pool).await;
    let eve = app.token_for("eve", &[("lobby", &["join"])]);
    let mine = app.connect(&eve).await;
    let admin = app.admin();
    let counter = CommandCounter::start(&app);
    counter.take().await;

    // Someone with no grant on the room, asking for their own connections
    // in it: bounded by what they own.
    let page = app
        .get("/v1/connections?room=crowd")
        .bearer(&eve)
        .send()
        .await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert_eq!(page.json()["items"], json!([]));
    let spent = counter.take().await;
    assert!(spent <= 10, "connections?room= sent {spent} Redis commands");

    // A page of occupants, and a page of connections in the room.
    for uri in [
        "/v1/rooms/crowd/connections?limit=5",
        "/v1/connections?room=crowd&limit=5",
    ] {
        let page = app.get(uri).bearer(&admin).send().await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        assert_eq!(page.json()["items"].as_array().unwrap().len(), 5);
        assert!(page.json()["next_cursor"].is_string());
        let spent = counter.take().await;
        assert!(spent <= 15, "{uri} sent {spent} Redis commands");
    }

    // Paging still reaches every occupant exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            None => "/v1/rooms/crowd/connections?limit=64".to_owned(),
            Some(cursor) => format!("/v1/rooms/crowd/connections?limit=64&cursor={cursor}"),
        };
        let page = app.get(&uri).bearer(&admin).send().await.json();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), CROWD);
    assert!(!seen.contains(&mine));
}

#[sqlx::test]
async fn a_stream_snapshot_reads_occupants_in_a_few_round_trips(pool: PgPool) {
    let app = crowded(pool).await;
    let base = app.listen().await;
    let admin = format!("Bearer {}", app.admin());
    let counter = CommandCounter::start(&app);
    counter.take().await;
    let (status, stream) = sse::open(
        &format!("{base}/v1/rooms/crowd/events"),
        &[("authorization", admin.as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let sync = stream.unwrap().expect("sync").await;
    assert_eq!(sync.data["occupants"].as_array().unwrap().len(), CROWD);
    let spent = counter.take().await;
    assert!(
        spent <= 20,
        "a room stream's sync sent {spent} Redis commands"
    );
}

#[sqlx::test]
async fn streams_per_subject_are_capped(pool: PgPool) {
    let mut settings = test_settings();
    settings.max_streams_per_subject = 2;
    let app = TestApp::with_settings(pool, settings).await;
    let base = app.listen().await;
    app.create_room("lobby", json!({})).await;
    let ann = app.token_for("ann", &[("lobby", &["read", "join"])]);
    let auth = format!("Bearer {ann}");
    let url = format!("{base}/v1/rooms/lobby/events");
    let headers = [("authorization", auth.as_str())];
    let open = || sse::open(&url, &headers);
    let (first, one) = open().await;
    let (second, _two) = open().await;
    assert_eq!((first, second), (StatusCode::OK, StatusCode::OK));

    // A third stream of any kind is refused with a problem and Retry-After.
    let third = app.get("/v1/rooms/lobby/events").bearer(&ann).send().await;
    third.assert_problem(StatusCode::TOO_MANY_REQUESTS, "too-many-streams");
    assert!(third.headers.contains_key("retry-after"), "{third:?}");
    let id = app.connect(&ann).await;
    app.get(&format!("/v1/connections/{id}/events"))
        .bearer(&ann)
        .send()
        .await
        .assert_problem(StatusCode::TOO_MANY_REQUESTS, "too-many-streams");

    // Others are not affected.
    let bob = format!("Bearer {}", app.token_for("bob", &[("lobby", &["read"])]));
    assert_eq!(
        sse::open(&url, &[("authorization", bob.as_str())]).await.0,
        StatusCode::OK
    );

    // Closing one frees its slot.
    drop(one);
    let mut reopened = StatusCode::TOO_MANY_REQUESTS;
    for _ in 0..50 {
        reopened = open().await.0;
        if reopened == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reopened, StatusCode::OK);
}
