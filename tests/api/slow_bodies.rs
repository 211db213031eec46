//! Slow-loris over a real socket: a client that sends its request head and
//! then its body very slowly, or stops mid-body, gets a 408 within the
//! configured request timeout and its connection closed, and one that
//! dribbles its request head has its connection closed — the server does
//! not hold a request open for as long as the client likes. Event streams,
//! which stay open by design, are not cut by that timeout.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::helpers::{TestApp, test_settings};
use crate::sse;

/// The request timeout the app under test runs with.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Far longer than the timeout, so a busy machine cannot fail the test;
/// only a server that never answers does.
const DEADLINE: Duration = Duration::from_secs(20);

async fn slow_app(pool: PgPool) -> (TestApp, String) {
    let mut settings = test_settings();
    settings.request_timeout = REQUEST_TIMEOUT;
    let app = TestApp::with_settings(pool, settings).await;
    let base = app.listen().await;
    (app, base)
}

/// How the body dribbles in.
enum Pace {
    /// A few bytes, then silence with the socket open.
    Stall,
    /// One byte every 300 ms, for longer than the timeout.
    Trickle,
    /// Chunked encoding, one small chunk every 300 ms and no last chunk.
    TrickleChunked,
}

/// Sends a `PUT` of room metadata at `pace`; returns everything the server
/// sent until it closed the connection (or the deadline passed).
async fn slow_put(base: &str, token: &str, pace: Pace) -> String {
    let addr = base.trim_start_matches("http://");
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let framing = match pace {
        Pace::TrickleChunked => "Transfer-Encoding: chunked".to_owned(),
        _ => "Content-Length: 1000".to_owned(),
    };
    let head = format!(
        "PUT /v1/rooms/lobby/metadata HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.expect("head");

    let (mut reader, mut writer) = socket.into_split();
    let feeder = tokio::spawn(async move {
        match pace {
            Pace::Stall => {
                let _ = writer.write_all(br#"{"topic":"#).await;
                // Keep the write half open (dropping it would half-close).
                tokio::time::sleep(DEADLINE).await;
            }
            Pace::Trickle | Pace::TrickleChunked => {
                for byte in br#"{"topic":"slow-loris-slow-loris-slow-loris"#.iter().cycle() {
                    let bytes = match pace {
                        Pace::TrickleChunked => format!("1\r\n{}\r\n", *byte as char).into_bytes(),
                        _ => vec![*byte],
                    };
                    if writer.write_all(&bytes).await.is_err() {
                        break; // The server closed the connection.
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        drop(writer);
    });

    let received = read_until_closed(&mut reader).await;
    feeder.abort();
    received
}

/// Everything the server sends until it closes the connection; panics if
/// it is still open after [`DEADLINE`].
async fn read_until_closed(reader: &mut OwnedReadHalf) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        let mut buffer = [0u8; 4096];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    let received = String::from_utf8_lossy(&received).into_owned();
    assert!(
        read.is_ok(),
        "the connection was still open after {DEADLINE:?}; received {received:?}"
    );
    received
}

#[sqlx::test]
async fn slow_or_stalled_bodies_time_out_with_408_and_close(pool: PgPool) {
    let (app, base) = slow_app(pool).await;
    app.create_room("lobby", json!({ "topic": "before" })).await;
    let token = app.admin();

    for (case, pace) in [
        ("stalled mid-body", Pace::Stall),
        ("one byte at a time", Pace::Trickle),
        ("one chunk at a time", Pace::TrickleChunked),
    ] {
        let answer = slow_put(&base, &token, pace).await;
        assert!(
            answer.starts_with("HTTP/1.1 408 "),
            "{case}: expected a 408, got {answer:?}"
        );
        assert!(
            answer.contains("application/problem+json")
                && answer.contains(r#""code":"request-timeout""#),
            "{case}: {answer:?}"
        );
    }

    // Nothing was written.
    let response = app
        .get("/v1/rooms/lobby/metadata")
        .bearer(&token)
        .send()
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.version(), 1);
    assert_eq!(response.json(), json!({ "topic": "before" }));
}

#[sqlx::test]
async fn a_dribbled_request_head_gets_its_connection_closed(pool: PgPool) {
    let (_app, base) = slow_app(pool).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let socket = TcpStream::connect(&addr).await.expect("connect");
    let (mut reader, mut writer) = socket.into_split();
    let feeder = tokio::spawn(async move {
        let start = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
        let _ = writer.write_all(start.as_bytes()).await;
        // A header that never ends, one byte every 300 ms.
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(b"a").await.is_err() {
                break; // The server closed the connection.
            }
        }
    });

    let received = read_until_closed(&mut reader).await;
    feeder.abort();
    assert!(
        !received.starts_with("HTTP/1.1 2"),
        "the request was served: {received:?}"
    );
}

#[sqlx::test]
async fn event_streams_outlive_the_request_timeout(pool: PgPool) {
    let (app, base) = slow_app(pool).await;
    app.create_room("lobby", json!({})).await;
    let token = app.admin();
    let (status, stream) = sse::open(
        &format!("{base}/v1/rooms/lobby/events"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = stream.unwrap();
    stream.expect("sync").await;

    // Well past the request timeout, the stream still delivers.
    tokio::time::sleep(REQUEST_TIMEOUT * 3).await;
    app.put("/v1/rooms/lobby/metadata")
        .bearer(&token)
        .json(&json!({ "after": "the timeout" }))
        .send()
        .await;
    let frame = stream.expect("room.metadata.updated").await;
    assert_eq!(frame.data["metadata"], json!({ "after": "the timeout" }));
}
