//! What a hostile client controls at the edge — the method, the request id,
//! the `Origin` — must not grow the metrics, the logs or what a foreign site
//! may read.

use axum::http::{Method, StatusCode};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, TestResponse, test_settings};

/// Sends `head` (a whole request head) over a fresh TCP connection to `base`
/// and returns the response's status line.
async fn raw_status_line(base: &str, head: &str) -> String {
    let addr = base.strip_prefix("http://").unwrap();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or_default().to_owned()
}

async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics").send().await;
    assert_eq!(response.status, StatusCode::OK);
    String::from_utf8(response.body).unwrap()
}

#[sqlx::test]
async fn made_up_methods_add_no_metric_series(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.listen().await;
    // Scraped twice so the scrape's own series exists before we measure.
    scrape(&app).await;
    let before = scrape(&app).await;

    let marker = "Q".repeat(50_000);
    for i in 0..10 {
        let head =
            format!("MADEUP{i}{marker} /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let status = raw_status_line(&base, &head).await;
        assert!(status.starts_with("HTTP/1.1 "), "answered: {status:?}");
    }

    let after = scrape(&app).await;
    assert!(!after.contains("MADEUP"), "a made-up method became a label");
    assert!(
        after.contains(r#"method="other",route="/healthz""#),
        "made-up methods are counted as `other`"
    );
    // Ten 50 KB labels would add megabytes; a few new series (ours, or a
    // test running alongside) are a few KB each.
    assert!(
        after.len() <= before.len() + 64 * 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
}

#[sqlx::test]
async fn only_short_plain_request_ids_are_echoed(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let good = "Abc.1:2-3_x";
    let longest = "a".repeat(64);
    for id in [good, longest.as_str()] {
        let echoed = app.get("/healthz").header("x-request-id", id).send().await;
        assert_eq!(echoed.header("x-request-id"), Some(id));
    }

    let huge = "a".repeat(10 * 1024);
    let too_long = "a".repeat(65);
    for id in [
        huge.as_str(),
        too_long.as_str(),
        "",
        "has space",
        "a/b",
        "quote\"d",
        "{json}",
    ] {
        let replaced = app.get("/healthz").header("x-request-id", id).send().await;
        let given = replaced.header("x-request-id").unwrap();
        assert!(
            uuid::Uuid::parse_str(given).is_ok(),
            "{id:?} was replaced by a UUID, not {given:?}"
        );
    }
}

async fn app_with_cors(pool: PgPool, origins: &[&str]) -> TestApp {
    let mut settings = test_settings();
    settings.cors_origins = origins.iter().map(|o| o.to_string()).collect();
    TestApp::with_settings(pool, settings).await
}

/// A preflight for a stream and a stream request carrying a cookie, both
/// from `origin`.
async fn cross_origin(app: &TestApp, origin: &str) -> [TestResponse; 2] {
    app.create_room("lobby", serde_json::json!({})).await;
    let preflight = app
        .request(Method::OPTIONS, "/v1/rooms/lobby/events")
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .send()
        .await;
    let token = app.token_for("alice", &[("lobby", &["read"])]);
    let read = app
        .get("/v1/rooms/lobby/events")
        .header("origin", origin)
        .header("cookie", &format!("metacast_token={token}"))
        .send()
        .await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    [preflight, read]
}

#[sqlx::test]
async fn cors_star_allows_any_origin_without_credentials(pool: PgPool) {
    let app = app_with_cors(pool, &["*"]).await;
    for response in cross_origin(&app, "https://evil.example").await {
        assert_eq!(
            response.header("access-control-allow-origin"),
            Some("*"),
            "{response:?}"
        );
        // Without credentials a browser neither sends the cookie nor lets
        // the page read a cookie-authorized answer.
        assert_eq!(
            response.header("access-control-allow-credentials"),
            None,
            "{response:?}"
        );
    }
}

#[sqlx::test]
async fn cors_listed_origins_get_credentials_and_others_nothing(pool: PgPool) {
    let app = app_with_cors(pool, &["https://app.example"]).await;
    for response in cross_origin(&app, "https://app.example").await {
        assert_eq!(
            response.header("access-control-allow-origin"),
            Some("https://app.example"),
            "{response:?}"
        );
        assert_eq!(
            response.header("access-control-allow-credentials"),
            Some("true"),
            "{response:?}"
        );
    }
    for response in cross_origin(&app, "https://evil.example").await {
        assert_eq!(
            response.header("access-control-allow-origin"),
            None,
            "{response:?}"
        );
    }
}
