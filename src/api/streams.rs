//! Event streams over SSE, opened with a ticket, a bearer token or a cookie.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::connections::ConnectionPath;
use super::rooms::find_room;
use crate::auth::policy::{self, Manage};
use crate::auth::{Action, AuthUser, RoomPath};
use crate::bounds::StreamSlot;
use crate::error::{Error, ProblemDetails};
use crate::events::subscriber::{self, Start};
use crate::events::{connection_stream, frame};
use crate::extract::Query;
use crate::presence::connections;
use crate::state::AppState;

/// Keep-alive comments: proxies and browsers see traffic at least this often.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The cookie that may carry the token for `EventSource` reconnects.
const TOKEN_COOKIE: &str = "metacast_token";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(room_events))
        .routes(routes!(connection_events))
}

/// How a stream was authorized: a ticket, the bearer header, or the cookie.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// A single-use ticket from `POST /v1/stream-tickets`.
    ticket: Option<String>,
    /// Resume after this event id (same as the `Last-Event-ID` header).
    last_event_id: Option<String>,
}

/// The caller of a stream endpoint, from a ticket (spent on use), the
/// `Authorization` header, or the `metacast_token` cookie.
pub struct StreamUser(pub AuthUser);

impl FromRequestParts<AppState> for StreamUser {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Query(params) = Query::<StreamParams>::from_request_parts(parts, state).await?;
        if let Some(ticket) = params.ticket {
            return Ok(Self(super::tickets::redeem(state, &ticket).await?));
        }
        if parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(Self(AuthUser::from_request_parts(parts, state).await?));
        }
        match cookie(&parts.headers, TOKEN_COOKIE) {
            Some(token) => Ok(Self(AuthUser::from_token(&state.jwt_keys, token)?)),
            None => Err(Error::Unauthorized(
                "a ticket, an Authorization: Bearer token or the metacast_token cookie is required"
                    .into(),
            )),
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// Every change in a room, as Server-Sent Events (needs `read`).
///
/// Starts with one `sync` event (room metadata and version, the session
/// with its metadata, the occupants), or — with `Last-Event-ID` /
/// `last_event_id` — replays exactly what was missed; when history cannot
/// cover the gap it sends a `sync` instead. Then every change, in order.
/// A `*.metadata.updated` event carries the whole document, its version and
/// the patch as sent; a patch larger or deeper than a document may be is
/// left out (`"patch": null, "patch_omitted": true`), so no event outgrows
/// the document limit. Keep-alive comments every 15 s. The stream ends when
/// the token expires, when the room is deleted (after `room.deleted`), or
/// when the instance shuts down; reconnect with the last id.
#[utoipa::path(
    get, path = "/v1/rooms/{room}/events", tag = "events", operation_id = "events.room",
    params(
        ("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"),
        StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid room id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token, or a spent ticket", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow read on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 429, description = "The token's subject holds too many streams open (`too-many-streams`)", body = ProblemDetails, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Postgres or Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn room_events(
    StreamUser(user): StreamUser,
    RoomPath(room): RoomPath,
    State(state): State<AppState>,
    Query(params): Query<StreamParams>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    policy::require(&user, &room, Action::Read)?;
    let slot = state.bounds.stream_slot(&user.subject)?;
    find_room(&state, &room).await?;
    let start = last_event_id(&headers, params).map_or(Start::Sync, Start::After);
    let frames = subscriber::open(&state, room.as_str(), start).await?;
    Ok(sse(&state, slot, frames, user.expires_at))
}

/// Where a client resumes: the `Last-Event-ID` header, else `?last_event_id=`.
fn last_event_id(headers: &HeaderMap, params: StreamParams) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or(params.last_event_id)
}

/// The SSE response for a subscriber's frames: a keep-alive comment after
/// every 15 s without a frame, and the end when the token expires or the
/// instance stops (axum#2673: a stream is not ended by graceful shutdown).
fn sse(
    state: &AppState,
    slot: StreamSlot,
    frames: impl Stream<Item = Bytes> + Send + 'static,
    token_expires_at: u64,
) -> Response {
    let open = crate::metrics::OpenStream::start();
    let expires_in =
        Duration::from_secs(token_expires_at.saturating_sub(Utc::now().timestamp() as u64));
    let lifecycle = state.lifecycle.clone();
    let end = async move {
        tokio::select! {
            () = tokio::time::sleep(expires_in) => {}
            () = lifecycle.stopped() => {}
        }
    };
    let idle = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    let body = tokio_stream::StreamExt::timeout_repeating(frames, idle)
        .map(move |frame| {
            // The gauge and the subject's slot count the stream until its
            // body is dropped.
            let _open = (&open, &slot);
            Ok::<_, Infallible>(frame.unwrap_or(frame::KEEP_ALIVE))
        })
        .take_until(end);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// The connection's own stream (its owner, or an admin): the events of every
/// room it is in and its own metadata changes, behind one cursor id.
///
/// Starts with one `sync` (`connection` and a snapshot per room); a room
/// joined later gets its own `sync`. Resume with `Last-Event-ID` replays
/// each room exactly. While open it keeps the connection's lease alive;
/// when the last stream of the connection closes, the connection leaves its
/// rooms after a grace period (`METACAST_STREAM_GRACE_MS`, 5 s) unless a
/// stream reopens — so a quick reconnect does not flap presence.
#[utoipa::path(
    get, path = "/v1/connections/{id}/events", tag = "events", operation_id = "events.connection",
    params(
        ("id" = String, Path, description = "Connection id", format = Uuid),
        StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid connection id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token, or a spent ticket", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such connection, or not the caller's", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 429, description = "The token's subject holds too many streams open (`too-many-streams`)", body = ProblemDetails, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn connection_events(
    StreamUser(user): StreamUser,
    ConnectionPath(id): ConnectionPath,
    State(state): State<AppState>,
    Query(params): Query<StreamParams>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let conn = policy::authorize_as::<Manage>(&user, &id, connections::load(&state, &id).await?)?;
    let slot = state.bounds.stream_slot(&user.subject)?;
    let cursor = last_event_id(&headers, params);
    let frames = connection_stream::open(&state, &user, &conn, cursor).await?;
    Ok(sse(
        &state,
        slot,
        ReceiverStream::new(frames),
        user.expires_at,
    ))
}
