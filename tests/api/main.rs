//! Integration tests: the application in-process, driven over HTTP the way a
//! client sees it, against real Postgres (a database per test, via
//! `#[sqlx::test]`) and real Redis (a key prefix per test).

#![allow(
    clippy::unwrap_used,
    reason = "in a test, a panic is the failure report"
)]

mod auth;
mod bodies;
mod bounds;
mod cancel;
mod concurrency;
mod connection_streams;
mod connections;
mod content_oracle;
mod cursor;
mod document_cache;
mod edge;
mod errors;
mod fencing;
mod filters;
mod helpers;
#[path = "../common/history.rs"]
mod history;
mod history_bounds;
mod lanes;
mod lifecycle;
mod openapi;
mod ops;
mod ordering;
mod outbox;
mod permissions;
mod presence;
mod read_rule;
mod relay_bounds;
mod rooms;
mod slow_bodies;
mod sockets;
mod sse;
#[path = "../common/sse_text.rs"]
mod sse_text;
mod stream_rules;
mod streams;
mod tickets;
