//! Errors the way clients see them: problem+json for every failure, 503 with
//! Retry-After when a store is down, axum's own rejections included.

use std::time::Duration;

use axum::http::StatusCode;
use metacast::config::Settings;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::helpers::{TestApp, test_settings};

#[sqlx::test]
async fn unknown_routes_and_methods_are_problems(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.get("/v1/nothing-here")
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "unknown-route");
    app.request(axum::http::Method::POST, "/v1/rooms/lobby/metadata")
        .bearer(&app.admin())
        .send()
        .await
        .assert_problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
}

/// Settings whose stores are closed ports: every connection is refused.
fn unreachable_stores() -> Settings {
    let mut settings = test_settings();
    settings.redis_url = "redis://127.0.0.1:1".to_owned().into();
    settings.db_acquire_timeout = Duration::from_millis(300);
    settings
}

#[sqlx::test]
async fn postgres_down_is_503_with_retry_after(_pool: PgPool) {
    let settings = unreachable_stores();
    let dead = PgPoolOptions::new()
        .acquire_timeout(settings.db_acquire_timeout)
        .connect_lazy("postgres://postgres@127.0.0.1:1/metacast")
        .unwrap();
    let app = TestApp::with_settings(dead, settings).await;
    let token = app.admin();

    for response in [
        app.get("/v1/rooms/lobby/metadata")
            .bearer(&token)
            .send()
            .await,
        app.put("/v1/rooms/lobby/metadata")
            .bearer(&token)
            .json(&json!({}))
            .send()
            .await,
        app.get("/v1/rooms").bearer(&token).send().await,
    ] {
        response.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "database-unavailable");
        assert_eq!(response.header("retry-after"), Some("1"));
        assert!(
            !String::from_utf8_lossy(&response.body).contains("127.0.0.1"),
            "internals never leak: {response:?}"
        );
    }
    let ready = app.get("/readyz").send().await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.header("retry-after"), Some("1"));
}

#[sqlx::test]
async fn redis_down_fails_readiness_but_not_room_metadata(pool: PgPool) {
    let app = TestApp::with_settings(pool, unreachable_stores()).await;
    let ready = app.get("/readyz").send().await;
    ready.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "redis-unavailable");
    assert_eq!(ready.header("retry-after"), Some("1"));

    // Room metadata is durable in Postgres and keeps working.
    assert_eq!(app.create_room("lobby", json!({"a": 1})).await, 1);
}
