//! Prometheus metrics: request count and latency by route template and
//! status, plus gauges sampled when `/metrics` is scraped.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

const REQUESTS: &str = "metacast_http_requests_total";
const DURATION: &str = "metacast_http_request_duration_seconds";
const POOL: &str = "metacast_db_pool_connections";
const OPEN_STREAMS: &str = "metacast_open_streams";
const STREAM_SYNCS: &str = "metacast_stream_syncs_total";
const OUTBOX_BACKLOG: &str = "metacast_outbox_backlog";
const SWEEPER_LAG: &str = "metacast_sweeper_lag_seconds";
const DOCUMENT_CACHE: &str = "metacast_document_cache_lookups_total";
const RELAY_FAILURES: &str = "metacast_outbox_relay_failures_total";
const RELAY_QUARANTINED: &str = "metacast_outbox_quarantined_total";

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder. `metrics` has one global recorder, so it is
/// installed once and shared by every router built in this process.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder was installed first; then our
            // handle renders nothing, which the metrics test would catch.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Middleware: counts and times every request under its route template.
pub async fn track(request: Request, next: Next) -> Response {
    let route = route_label(&request).to_owned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!(REQUESTS, &labels).increment(1);
    metrics::histogram!(DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// The method as a label (and log field): one of the methods the API
/// knows, else `other`. hyper accepts any token as a method, hundreds of KB
/// long; used as sent, each made-up one would be a new series forever.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The route template the request matched, or `unmatched`: never the raw
/// path, which the client chooses.
pub fn route_label(request: &Request) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
}

/// Counts an open event stream for as long as the guard lives.
pub struct OpenStream(());

impl OpenStream {
    pub fn start() -> Self {
        metrics::gauge!(OPEN_STREAMS).increment(1.0);
        Self(())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_STREAMS).decrement(1.0);
    }
}

/// Counts a `sync` sent to a stream: `start` (new subscription or an id
/// that cannot be resumed), `lag` (the subscriber fell behind), or `resync`
/// (the event history was lost).
pub fn stream_sync(reason: &'static str) {
    metrics::counter!(STREAM_SYNCS, "reason" => reason).increment(1);
}

/// Counts a room whose outbox rows the relay could not append this round.
pub fn relay_failed() {
    metrics::counter!(RELAY_FAILURES).increment(1);
}

/// Counts outbox rows Redis refused, set aside in `outbox_quarantine`.
pub fn relay_quarantined(rows: usize) {
    metrics::counter!(RELAY_QUARANTINED).increment(rows as u64);
}

/// Counts a metadata GET served from the document cache (`hit`) or read
/// from Postgres (`miss`).
pub fn document_cache_lookup(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!(DOCUMENT_CACHE, "result" => result).increment(1);
}

/// Values sampled from the stores when `/metrics` is scraped; `None` when a
/// store cannot be asked (the scrape still succeeds).
pub struct Sampled {
    pub outbox_backlog: Option<i64>,
    /// How far the oldest unswept lease deadline lies in the past.
    pub sweeper_lag_seconds: Option<f64>,
}

/// Renders the exposition text, sampling the pool and store gauges first.
pub fn render(handle: &PrometheusHandle, pool: &PgPool, sampled: &Sampled) -> String {
    let idle = pool.num_idle() as f64;
    let total = f64::from(pool.size());
    metrics::gauge!(POOL, "state" => "idle").set(idle);
    metrics::gauge!(POOL, "state" => "in_use").set(total - idle);
    if let Some(backlog) = sampled.outbox_backlog {
        metrics::gauge!(OUTBOX_BACKLOG).set(backlog as f64);
    }
    if let Some(lag) = sampled.sweeper_lag_seconds {
        metrics::gauge!(SWEEPER_LAG).set(lag);
    }
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_api_share_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::TRACE), "other");
        let made_up = Method::from_bytes("X".repeat(10_000).as_bytes()).unwrap();
        assert_eq!(method_label(&made_up), "other");
        // Methods are case-sensitive: `get` is not GET.
        assert_eq!(method_label(&Method::from_bytes(b"get").unwrap()), "other");
    }
}
