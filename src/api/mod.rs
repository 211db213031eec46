//! The HTTP surface: routes, middleware and the OpenAPI document, all built
//! from the handlers' annotations so the spec cannot drift from the code.

mod connections;
mod demo;
mod occupancy;
mod ops;
mod pagination;
mod room_list;
mod rooms;
mod sessions;
mod streams;
mod tickets;

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower::util::MapRequestLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Instrument;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::{Error, ProblemDetails};
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "metacast",
        description = "Room, session and connection metadata for realtime apps: versioned JSON \
                       documents behind a JWT-authorized, permission-checked REST API.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&BearerAuth),
    components(schemas(ProblemDetails)),
    tags(
        (name = "rooms", description = "Rooms and their durable metadata document"),
        (name = "presence", description = "Joining and leaving rooms; occupants"),
        (name = "sessions", description = "A room's sessions: first join to last leave"),
        (name = "connections", description = "Client connections with leases, and their metadata"),
        (name = "events", description = "Change streams over Server-Sent Events"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
struct ApiDoc;

/// Registers the `bearer` security scheme the protected operations refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        // Room metadata and the room envelope.
        .merge(rooms::router())
        // Joining, leaving, occupants, clearing a room.
        .merge(occupancy::router())
        // The active session, its metadata, and history.
        .merge(sessions::router())
        // Connections and their metadata.
        .merge(connections::router())
        // Stream tickets, then event streams.
        .merge(tickets::router())
        .merge(streams::router())
        // Health, readiness and metrics: no authentication.
        .merge(ops::router())
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

/// The complete application: routes, docs and middleware.
pub fn router(state: AppState) -> Router {
    let (routes, api) = api_router().split_for_parts();
    let settings = state.settings.clone();
    let middleware = ServiceBuilder::new()
        .layer(MapRequestLayer::new(drop_unfit_request_id))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(cors(&settings.cors_origins))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes));
    let timeout = settings.request_timeout;
    routes
        // SwaggerUi serves /openapi.json itself; a second route would panic.
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
        .merge(demo::router())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(to_completion))
        .layer(middleware::from_fn(move |request, next| {
            with_timeout(timeout, request, next)
        }))
        .layer(middleware::from_fn(crate::metrics::track))
        .layer(middleware)
        .with_state(state)
}

/// The longest client request id we echo and log.
const MAX_REQUEST_ID_BYTES: usize = 64;

/// Removes a client's `x-request-id` unless it is one header of 1–64 bytes
/// of `[A-Za-z0-9._:-]`, so that `SetRequestId` puts a fresh UUID in its
/// place: the id is echoed and written into every log line of the request,
/// and a client must not choose its size or put quotes, spaces or braces
/// (log syntax) in it.
fn drop_unfit_request_id(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let mut values = headers.get_all(&REQUEST_ID).iter();
    let fit = match (values.next(), values.next()) {
        (Some(value), None) => is_fit_request_id(value.as_bytes()),
        (None, _) => return request,
        (Some(_), Some(_)) => false,
    };
    if !fit {
        headers.remove(&REQUEST_ID);
    }
    request
}

fn is_fit_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_BYTES).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The request's span. Every field is bounded: the method and route as the
/// metrics label them (a made-up method or an unknown path of any length
/// does not reach the logs), and the request id once it was checked.
fn request_span(request: &Request) -> tracing::Span {
    let route = crate::metrics::route_label(request);
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = crate::metrics::method_label(request.method()),
        route,
        request_id,
        user_id = tracing::field::Empty,
        room_id = tracing::field::Empty,
    )
}

/// CORS from `METACAST_CORS_ORIGINS`: `*` lets any site read answers to
/// requests without credentials (`Access-Control-Allow-Origin: *`, no
/// cookie); listed origins, and only they, may also send credentials —
/// streams accept the `metacast_token` cookie, so mirroring any origin with
/// credentials would let every website read a logged-in user's streams.
/// `Settings::validate` refuses `*` mixed with origins.
fn cors(origins: &[String]) -> CorsLayer {
    let layer = match origins {
        [] => return CorsLayer::new(),
        [star] if star == "*" => CorsLayer::new().allow_origin(AllowOrigin::any()),
        listed => CorsLayer::new()
            .allow_origin(AllowOrigin::list(
                // Validated at start-up: every origin is a header value.
                listed
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok()),
            ))
            .allow_credentials(true),
    };
    layer
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::ETAG, header::LOCATION, header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

/// Runs a request that may change something in a task of its own, which
/// finishes whatever becomes of the client: hyper drops a handler at its
/// next `.await` once the client goes away (and the timeout does when it
/// fires), and a mutation of several Redis and Postgres steps cut between
/// two of them would leave them half done for everyone (a connection
/// without a lease, a member without a session). Reads need no task.
///
/// The body is read first, here, within the limit and the request timeout:
/// a client that stalls it holds no task, and the task never waits on it.
async fn to_completion(request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // The copy of the parts carries the body limit the extractors apply.
    let read = Bytes::from_request(Request::from_parts(parts.clone(), body), &()).await;
    let body = match read {
        Ok(body) => body,
        Err(rejection) => return Error::from(rejection).into_response(),
    };
    let request = Request::from_parts(parts, axum::body::Body::from(body));
    let task = tokio::spawn(next.run(request).instrument(tracing::Span::current()));
    match task.await {
        Ok(response) => response,
        Err(err) => {
            tracing::error!(error = %err, "a request's task failed");
            Error::Internal(anyhow::anyhow!("the request's task failed")).into_response()
        }
    }
}

/// Bounds the time to answer, including reading the body, with a problem body.
async fn with_timeout(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Error::client(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            format!("the request took longer than {} s", limit.as_secs()),
        )
        .into_response(),
    }
}

async fn unknown_route() -> Error {
    Error::not_found("unknown-route", "no such endpoint; see /docs")
}

async fn method_not_allowed() -> Error {
    Error::client(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this endpoint does not support the method; see /docs",
    )
}
