//! The demo page at `/demo/`: a live view of one room over SSE, with a small
//! copyable browser client. The files are compiled into the binary, so the
//! page works on a machine with no internet; they are plain routes, not part
//! of the OpenAPI document.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../demo/index.html");
const DEMO_JS: &str = include_str!("../../demo/demo.js");
const CLIENT_JS: &str = include_str!("../../demo/metacast-client.js");
const DEMO_CSS: &str = include_str!("../../demo/demo.css");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Everything comes from this server: no inline scripts or styles, no
/// third-party origins. `connect-src 'self'` covers the API and the stream.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(|| async { page(HTML, INDEX_HTML) }))
        .route("/demo/demo.js", get(|| async { file(JAVASCRIPT, DEMO_JS) }))
        .route(
            "/demo/metacast-client.js",
            get(|| async { file(JAVASCRIPT, CLIENT_JS) }),
        )
        .route("/demo/demo.css", get(|| async { file(CSS, DEMO_CSS) }))
}

/// A static file; `no-cache` so a new binary's files are picked up at once.
fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The HTML page, with its content security policy.
fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = file(content_type, body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
