//! Stream tickets under a hostile client: how many one subject may hold,
//! what each one keeps in Redis, how long it lives, and what a presented
//! ticket must look like before Redis is asked.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use metacast::auth::{MetacastClaim, TokenRequest};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, TestResponse, test_settings};

/// `METACAST_MAX_TICKETS_PER_SUBJECT`'s default.
const DEFAULT_CAP: usize = 32;

async fn mint(app: &TestApp, token: &str) -> TestResponse {
    app.post("/v1/stream-tickets").bearer(token).send().await
}

async fn mint_ticket(app: &TestApp, token: &str) -> String {
    let response = mint(app, token).await;
    assert_eq!(response.status, StatusCode::CREATED, "{response:?}");
    response.json()["ticket"].as_str().unwrap().to_owned()
}

async fn open_with(app: &TestApp, ticket: &str) -> TestResponse {
    app.get(&format!("/v1/rooms/lobby/events?ticket={ticket}"))
        .send()
        .await
}

#[sqlx::test]
async fn a_subject_holds_a_bounded_number_of_tickets(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("lobby", json!({})).await;
    let alice = app.token_for("alice", &[("lobby", &["read"])]);
    let mut tickets = Vec::new();
    for _ in 0..DEFAULT_CAP {
        tickets.push(mint_ticket(&app, &alice).await);
    }

    let refused = mint(&app, &alice).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "too-many-tickets");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");

    // Another subject has a quota of its own.
    let bob = app.token_for("bob", &[("lobby", &["read"])]);
    mint_ticket(&app, &bob).await;

    // A ticket opens a stream once, and its use gives its place back.
    let spent = tickets.pop().unwrap();
    assert_eq!(open_with(&app, &spent).await.status, StatusCode::OK);
    open_with(&app, &spent)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "invalid-token");
    mint_ticket(&app, &alice).await;
    mint(&app, &alice)
        .await
        .assert_problem(StatusCode::TOO_MANY_REQUESTS, "too-many-tickets");
}

#[sqlx::test]
async fn a_ticket_stores_the_identity_not_the_token(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("lobby", json!({})).await;
    // A token made large by grants a stream has no use for.
    let mut grants: Vec<(String, Vec<&str>)> = (0..100)
        .map(|i| (format!("room-with-a-long-name-{i:03}"), vec!["join"]))
        .collect();
    grants.push(("lobby".to_owned(), vec!["read"]));
    let grants: Vec<(&str, &[&str])> = grants
        .iter()
        .map(|(room, actions)| (room.as_str(), actions.as_slice()))
        .collect();
    let token = app.token_for("alice", &grants);
    assert!(token.len() > 4000, "{} bytes", token.len());

    let ticket = mint_ticket(&app, &token).await;
    let mut redis = app.state.redis.clone();
    let stored: String = redis::cmd("GET")
        .arg(app.state.redis_keys.ticket(&ticket))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!stored.contains(&token), "the token is stored");
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !stored.contains(signature),
        "the token's signature is stored"
    );
    assert!(stored.len() < 1024, "{} bytes: {stored}", stored.len());
    assert!(stored.contains("alice"), "{stored}");

    // What it keeps is enough for the stream, and no more.
    assert_eq!(open_with(&app, &ticket).await.status, StatusCode::OK);
}

#[sqlx::test]
async fn a_ticket_lives_no_longer_than_its_token(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app
        .state
        .jwt_keys
        .mint(&TokenRequest {
            subject: "alice".to_owned(),
            claim: MetacastClaim::default(),
            ttl: Duration::from_secs(10),
        })
        .unwrap();
    let minted = mint(&app, &token).await;
    assert_eq!(minted.status, StatusCode::CREATED, "{minted:?}");
    let expires_at: DateTime<Utc> = minted.json()["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let left = expires_at - Utc::now();
    assert!(
        left.num_seconds() <= 11,
        "the ticket outlives its token: {left}"
    );

    let ticket = minted.json()["ticket"].as_str().unwrap().to_owned();
    let mut redis = app.state.redis.clone();
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(app.state.redis_keys.ticket(&ticket))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((1..=10_000).contains(&ttl_ms), "PTTL {ttl_ms}");
}

#[sqlx::test]
async fn a_malformed_ticket_is_refused_before_redis_is_asked(pool: PgPool) {
    // Redis is unreachable: a ticket that reaches it answers 503.
    let mut settings = test_settings();
    settings.redis_url = "redis://127.0.0.1:1".to_owned().into();
    settings.redis_cluster = false;
    let app = TestApp::with_settings(pool, settings).await;

    let well_formed = "A".repeat(43);
    open_with(&app, &well_formed)
        .await
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE, "redis-unavailable");

    let huge = "A".repeat(8 * 1024);
    let wrong_alphabet = format!("{}.", "A".repeat(42));
    for ticket in [
        "forged",
        &"A".repeat(42),
        &"A".repeat(44),
        &wrong_alphabet,
        &huge,
    ] {
        open_with(&app, ticket)
            .await
            .assert_problem(StatusCode::UNAUTHORIZED, "invalid-token");
    }
}
