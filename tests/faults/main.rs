//! Fault injection: metacast against Redis and Postgres servers of each
//! test's own (throw-away, on spare loopback ports), which the tests stop,
//! kill and restart under it; and metacast itself SIGKILLed mid-write.
//! Every scenario asserts what a client sees over HTTP and SSE, and that
//! nothing acknowledged is lost. `cargo test --test faults` runs just these;
//! docs/faults.md describes the harness.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, a panic is the failure report"
)]

mod client;
mod harness;
#[path = "../common/history.rs"]
mod history;
mod instance;
mod postgres_outage;
mod redis_outage;
mod sigkill;
#[path = "../common/sse_text.rs"]
mod sse_text;
