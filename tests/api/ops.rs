//! Operations: health, readiness, draining, metrics, CORS, request ids.

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, test_settings};

#[sqlx::test]
async fn health_and_readiness(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let health = app.get("/healthz").send().await;
    assert_eq!(
        (health.status, health.json()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let ready = app.get("/readyz").send().await;
    assert_eq!(
        (ready.status, ready.json()),
        (StatusCode::OK, json!({"status": "ready"}))
    );
}

#[sqlx::test]
async fn draining_instance_is_not_ready_but_still_serves(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.state.lifecycle.begin_drain();
    app.get("/readyz")
        .send()
        .await
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE, "draining");
    assert_eq!(app.create_room("lobby", json!({})).await, 1);
}

#[sqlx::test]
async fn metrics_count_requests_by_route_template(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("metrics-room", json!({})).await;
    let response = app.get("/metrics").send().await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(response.body).unwrap();
    assert!(
        text.contains(r#"metacast_http_requests_total{method="PUT",route="/v1/rooms/{room}/metadata",status="201"}"#),
        "{text}"
    );
    assert!(
        text.contains("metacast_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("metacast_db_pool_connections"), "{text}");
    assert!(text.contains("metacast_outbox_backlog"), "{text}");
    assert!(text.contains("metacast_sweeper_lag_seconds"), "{text}");
    assert!(
        !text.contains("metrics-room"),
        "labels use the route template, not the path"
    );
}

#[sqlx::test]
async fn every_response_has_a_request_id(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let response = app.get("/healthz").send().await;
    let id = response
        .header("x-request-id")
        .expect("generated request id");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let echoed = app
        .get("/healthz")
        .header("x-request-id", "abc-123")
        .send()
        .await;
    assert_eq!(echoed.header("x-request-id"), Some("abc-123"));
}

#[sqlx::test]
async fn cors_allows_conditional_headers_and_exposes_etag(pool: PgPool) {
    let mut settings = test_settings();
    settings.cors_origins = vec!["https://app.example".to_owned()];
    let app = TestApp::with_settings(pool, settings).await;

    let preflight = app
        .request(Method::OPTIONS, "/v1/rooms/lobby/metadata")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "authorization, if-match, content-type",
        )
        .send()
        .await;
    assert!(preflight.status.is_success(), "{preflight:?}");
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        preflight.header("access-control-allow-credentials"),
        Some("true")
    );
    let allowed = preflight
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for header in [
        "authorization",
        "content-type",
        "if-match",
        "if-none-match",
        "last-event-id",
    ] {
        assert!(allowed.contains(header), "{header} in {allowed}");
    }

    app.create_room("lobby", json!({})).await;
    let read = app
        .get("/v1/rooms/lobby/metadata")
        .bearer(&app.admin())
        .header("origin", "https://app.example")
        .send()
        .await;
    let exposed = read
        .header("access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    for header in ["etag", "location", "retry-after"] {
        assert!(exposed.contains(header), "{header} in {exposed}");
    }

    let foreign = app
        .get("/healthz")
        .header("origin", "https://evil.example")
        .send()
        .await;
    assert_eq!(foreign.header("access-control-allow-origin"), None);
}
