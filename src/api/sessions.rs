//! Sessions: the active session, its metadata, and the history of a room.

use axum::Json;
use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::pagination::{Page, PageParams, decode_cursor, encode_cursor, page_limit};
use super::rooms::{StrategyParams, content_type, not_modified, with_etag};
use crate::auth::policy;
use crate::auth::{Action, AuthUser, Read, RoomAccess, WriteSession};
use crate::db::outbox;
use crate::db::sessions::{self as db, SessionRow};
use crate::document::{Preconditions, Write};
use crate::error::{Error, ProblemDetails};
use crate::events::{self, Event, EventKind};
use crate::extract::{Body, Query};
use crate::ids::{RoomId, parse_uuid};
use crate::presence::occupancy;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_session))
        .routes(routes!(
            get_session_metadata,
            put_session_metadata,
            patch_session_metadata,
            delete_session_metadata
        ))
        .routes(routes!(list_sessions))
        .routes(routes!(get_session_by_id))
}

/// The active session of a room.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "01937b2e-9000-7cc3-9a6e-3c1b5d2f4e6a", "room": "lobby",
    "started_at": "2026-11-22T19:00:00Z", "occupancy": 2,
    "metadata": {"recording": true}, "version": 1
}))]
pub struct SessionOut {
    pub id: Uuid,
    pub room: String,
    pub started_at: DateTime<Utc>,
    pub occupancy: u64,
    /// The live session metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub version: i64,
}

impl SessionOut {
    pub fn new(row: SessionRow, occupancy: u64) -> Self {
        Self {
            id: row.id,
            room: row.room,
            started_at: row.started_at,
            occupancy,
            metadata: row.metadata.0,
            version: row.version,
        }
    }
}

/// A session in a room's history (ended, or still active).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "01937b2e-9000-7cc3-9a6e-3c1b5d2f4e6a", "room": "lobby",
    "started_at": "2026-11-22T19:00:00Z", "ended_at": "2026-11-22T19:42:00Z",
    "peak_occupancy": 5, "final_metadata": {"recording": true}
}))]
pub struct SessionRecord {
    pub id: Uuid,
    pub room: String,
    pub started_at: DateTime<Utc>,
    /// Null while the session is active.
    pub ended_at: Option<DateTime<Utc>>,
    pub peak_occupancy: i32,
    /// The session metadata when it ended; null while active.
    #[schema(value_type = Option<Object>)]
    pub final_metadata: Option<Value>,
}

impl From<SessionRow> for SessionRecord {
    fn from(row: SessionRow) -> Self {
        Self {
            id: row.id,
            room: row.room,
            started_at: row.started_at,
            ended_at: row.ended_at,
            peak_occupancy: row.peak_occupancy,
            final_metadata: row.final_metadata.map(|m| m.0),
        }
    }
}

fn no_active_session(room: &RoomId, status: StatusCode) -> Error {
    Error::client(
        status,
        "no-active-session",
        format!("room {room} has no active session"),
    )
}

async fn active(state: &AppState, room: &RoomId) -> Result<SessionRow, Error> {
    db::active(&state.db, room.as_str())
        .await?
        .ok_or_else(|| no_active_session(room, StatusCode::NOT_FOUND))
}

/// Get the room's active session.
#[utoipa::path(
    get, path = "/v1/rooms/{room}/session", tag = "sessions", operation_id = "sessions.active",
    params(("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The active session", body = SessionOut,
         headers(("ETag" = String, description = "The session metadata version, quoted"))),
        (status = 400, description = "Invalid room id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow read on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No active session (`no-active-session`)", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres or Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn get_session(
    access: RoomAccess<Read>,
    State(state): State<AppState>,
) -> Result<Response, Error> {
    let row = active(&state, &access.room).await?;
    let occupancy = occupancy::occupancy(&state, access.room.as_str()).await?;
    let version = row.version;
    Ok(with_etag(version, Json(SessionOut::new(row, occupancy))))
}

/// Get the active session's metadata (version in `ETag`).
#[utoipa::path(
    get, path = "/v1/rooms/{room}/session/metadata", tag = "sessions", operation_id = "sessions.metadata.get",
    params(
        ("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"),
        ("If-None-Match" = Option<String>, Header, description = "Answer 304 if this version is current", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The document", body = Object,
         headers(("ETag" = String, description = "The version, quoted"))),
        (status = 304, description = "Unchanged since the If-None-Match version"),
        (status = 400, description = "Invalid room id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow read on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No active session (`no-active-session`)", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn get_session_metadata(
    access: RoomAccess<Read>,
    preconditions: Preconditions,
    State(state): State<AppState>,
) -> Result<Response, Error> {
    let row = active(&state, &access.room).await?;
    if preconditions.not_modified(row.version) {
        return Ok(not_modified(row.version));
    }
    Ok(with_etag(row.version, Json(row.metadata.0)))
}

/// Replace the active session's metadata (needs `write_session`).
#[utoipa::path(
    put, path = "/v1/rooms/{room}/session/metadata", tag = "sessions", operation_id = "sessions.metadata.put",
    params(
        ("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"),
        ("If-Match" = Option<String>, Header, description = "Write only at this version", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
    ),
    request_body(content = Object, content_type = "application/json", example = json!({"recording": true})),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Replaced", body = Object,
         headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 400, description = "Invalid room id, JSON, shape or nesting", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow write_session on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "No active session (`no-active-session`)", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 412, description = "If-Match / If-None-Match failed", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body or document too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn put_session_metadata(
    access: RoomAccess<WriteSession>,
    preconditions: Preconditions,
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Error> {
    let write = Write::replace(content_type(&headers), &body)?;
    let row = write_metadata(&state, &access, &preconditions, &write).await?;
    Ok(with_etag(row.version, Json(row.metadata.0)))
}

/// Update the active session's metadata; the strategy follows the
/// `Content-Type` exactly as for room metadata.
#[utoipa::path(
    patch, path = "/v1/rooms/{room}/session/metadata", tag = "sessions", operation_id = "sessions.metadata.patch",
    params(
        ("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"),
        StrategyParams,
        ("If-Match" = Option<String>, Header, description = "Write only at this version", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
    ),
    request_body(content(
        (Object = "application/merge-patch+json", example = json!({"recording": null})),
        (Object = "application/json-patch+json", example = json!([{"op": "add", "path": "/recording", "value": true}])),
        (Object = "application/json", example = json!({"recording": true})),
    )),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated document", body = Object,
         headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 400, description = "Invalid room id, JSON, patch, strategy, shape or nesting", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow write_session on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "No active session, or a JSON Patch test failed", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 412, description = "If-Match failed", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body or resulting document too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported Content-Type", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "A JSON Patch path does not exist", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn patch_session_metadata(
    access: RoomAccess<WriteSession>,
    preconditions: Preconditions,
    State(state): State<AppState>,
    Query(params): Query<StrategyParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Error> {
    let write = Write::patch(content_type(&headers), params.strategy.as_deref(), &body)?;
    let row = write_metadata(&state, &access, &preconditions, &write).await?;
    Ok(with_etag(row.version, Json(row.metadata.0)))
}

/// Reset the active session's metadata to `{}` (a new version).
#[utoipa::path(
    delete, path = "/v1/rooms/{room}/session/metadata", tag = "sessions", operation_id = "sessions.metadata.delete",
    params(
        ("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"),
        ("If-Match" = Option<String>, Header, description = "Reset only at this version", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Reset to {}",
         headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 400, description = "Invalid room id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow write_session on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "No active session (`no-active-session`)", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 412, description = "If-Match failed", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn delete_session_metadata(
    access: RoomAccess<WriteSession>,
    preconditions: Preconditions,
    State(state): State<AppState>,
) -> Result<Response, Error> {
    let row = write_metadata(&state, &access, &preconditions, &Write::reset()).await?;
    Ok(with_etag(row.version, StatusCode::NO_CONTENT))
}

/// Applies `write` to the active session's metadata under the room's and
/// then the session's row lock (the order of every session transition),
/// recording `session.metadata.updated` in the same transaction.
async fn write_metadata(
    state: &AppState,
    access: &RoomAccess<WriteSession>,
    preconditions: &Preconditions,
    write: &Write,
) -> Result<SessionRow, Error> {
    let room = &access.room;
    let mut tx = crate::db::begin(&state.db).await?;
    crate::db::rooms::lock_row(&mut tx, room.as_str()).await?;
    let row = db::lock_active(&mut tx, room.as_str())
        .await?
        .ok_or_else(|| no_active_session(room, StatusCode::CONFLICT))?;
    let document = write.apply_checked(
        Some((&row.metadata.0, row.version)),
        preconditions,
        &state.settings.limits,
    )?;
    let stored = db::store_metadata(&mut tx, row.id, &document, row.version + 1).await?;
    let mut event = Event::metadata_updated(
        EventKind::SessionMetadataUpdated,
        room.as_str(),
        &access.user.subject,
        (&stored.metadata.0, stored.version),
        write,
        Some(("session_id", &stored.id.to_string())),
        &state.settings.limits,
    );
    outbox::record(&mut tx, &mut event).await?;
    tx.commit().await?;
    events::publish(state, std::slice::from_ref(&event)).await;
    Ok(stored)
}

/// The room's sessions, newest first (the active one included).
#[utoipa::path(
    get, path = "/v1/rooms/{room}/sessions", tag = "sessions", operation_id = "sessions.history",
    params(("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"), PageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of sessions", body = Page<SessionRecord>),
        (status = 400, description = "Invalid room id, limit or cursor", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow read on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn list_sessions(
    access: RoomAccess<Read>,
    State(state): State<AppState>,
    Query(params): Query<PageParams>,
) -> Result<Json<Page<SessionRecord>>, Error> {
    let limit = page_limit(params.limit)?;
    let after = params.cursor.as_deref().map(history_position).transpose()?;
    let mut rows = db::history(&state.db, access.room.as_str(), after, limit as i64 + 1).await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
            .map(|row| encode_cursor(&format!("{}/{}", row.started_at.timestamp_micros(), row.id)))
    } else {
        None
    };
    Ok(Json(Page {
        items: rows.into_iter().map(SessionRecord::from).collect(),
        next_cursor,
    }))
}

/// 9999-12-31T23:59:59.999999Z.
const MAX_HISTORY_MICROS: i64 = 253_402_300_799_999_999;

fn history_position(cursor: &str) -> Result<(DateTime<Utc>, Uuid), Error> {
    let invalid = || Error::bad_request("invalid-cursor", "cursor is not one this server issued");
    let position = decode_cursor(cursor)?;
    let (micros, id) = position.split_once('/').ok_or_else(invalid)?;
    // Sessions start after 1970 and before 10000: outside that, Postgres
    // may not even hold the time, and no issued cursor points there.
    let at = micros
        .parse::<i64>()
        .ok()
        .filter(|micros| (0..=MAX_HISTORY_MICROS).contains(micros))
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    let id = Uuid::try_parse(id).map_err(|_| invalid())?;
    Ok((at, id))
}

/// One session by id, active or ended (needs `read` on its room).
#[utoipa::path(
    get, path = "/v1/sessions/{id}", tag = "sessions", operation_id = "sessions.get",
    params(("id" = String, Path, description = "Session id", format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The session", body = SessionRecord),
        (status = 400, description = "Invalid id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such session, or not visible", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn get_session_by_id(
    user: AuthUser,
    SessionPath(id): SessionPath,
    State(state): State<AppState>,
) -> Result<Json<SessionRecord>, Error> {
    let visible = |row: &SessionRow| policy::may_in(&user, &row.room, Action::Read);
    let row = db::get(&state.db, id)
        .await?
        .filter(visible)
        .ok_or_else(|| {
            Error::not_found(
                "session-not-found",
                format!("session {id} does not exist or is not visible to this token"),
            )
        })?;
    Ok(Json(SessionRecord::from(row)))
}

/// The validated `{id}` of `/v1/sessions/{id}`.
struct SessionPath(Uuid);

impl FromRequestParts<AppState> for SessionPath {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::bad_request("invalid-session-id", "the id is not valid UTF-8"))?;
        let raw = params
            .iter()
            .find_map(|(name, value)| (name == "id").then_some(value))
            .ok_or_else(|| anyhow::anyhow!("session route without {{id}}"))?;
        Ok(Self(parse_uuid(raw, "session")?))
    }
}
