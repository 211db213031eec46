//! Rooms: the envelope, listing, deletion, and the metadata document.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Action, AuthUser, Delete, Read, RoomAccess, WriteRoom};
use crate::db::rooms::{self as db, ListQuery, RoomRow};
use crate::document::{Preconditions, Write, etag};
use crate::error::{Error, ProblemDetails};
use crate::extract::{Body, Query};
use crate::ids::RoomId;
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;
const MAX_WHERE_BYTES: usize = 4096;
/// Bound on a listing with a `where` filter: `like_regex` can be expensive.
const WHERE_TIMEOUT: &str = "2s";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_rooms))
        .routes(routes!(get_room, delete_room))
        .routes(routes!(
            get_room_metadata,
            put_room_metadata,
            patch_room_metadata,
            delete_room_metadata
        ))
}

/// A room with its metadata and live state.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "lobby", "metadata": {"topic": "standup"}, "version": 3,
    "created_at": "2026-11-22T19:00:00Z", "updated_at": "2026-11-22T19:05:00Z",
    "occupancy": 0, "session": null
}))]
pub struct RoomOut {
    pub id: String,
    /// The metadata document.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The document's version, also sent as `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Connections currently in the room.
    pub occupancy: u64,
    /// The active session, or null.
    #[schema(value_type = Option<Object>)]
    pub session: Option<Value>,
}

impl From<RoomRow> for RoomOut {
    fn from(row: RoomRow) -> Self {
        Self {
            id: row.id,
            metadata: row.metadata.0,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            // Presence and sessions live in their own module (not built yet):
            // until then no room has occupants or an active session.
            occupancy: 0,
            session: None,
        }
    }
}

/// One page of rooms.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomPage {
    pub items: Vec<RoomOut>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Filters and paging for `GET /v1/rooms`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only rooms whose id starts with this.
    prefix: Option<String>,
    /// A Postgres jsonpath predicate on the metadata, e.g.
    /// `$.type == "public" && $.members < $.max`.
    #[serde(rename = "where")]
    #[param(rename = "where")]
    filter: Option<String>,
    /// Page size, 1–500 (default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List the rooms the caller may `read`.
///
/// Ordered by id; filter by `prefix` and by a jsonpath `where` predicate
/// evaluated on the metadata.
#[utoipa::path(
    get, path = "/v1/rooms", tag = "rooms", operation_id = "rooms.list",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of rooms", body = RoomPage),
        (status = 400, description = "Bad limit, cursor or where expression", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn list_rooms(
    user: AuthUser,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<RoomPage>, Error> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::bad_request(
            "invalid-limit",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    if params
        .filter
        .as_ref()
        .is_some_and(|f| f.len() > MAX_WHERE_BYTES)
    {
        return Err(Error::bad_request(
            "invalid-where",
            format!("where is limited to {MAX_WHERE_BYTES} bytes"),
        ));
    }
    let access = user.permissions.filter_for(Action::Read);
    let query = ListQuery {
        access: &access,
        prefix: params.prefix.as_deref(),
        filter: params.filter.as_deref(),
        after: after.as_deref(),
        // One extra row tells whether another page follows.
        limit: limit + 1,
    };
    let mut tx = state.db.begin().await?;
    if query.filter.is_some() {
        sqlx::query("select set_config('statement_timeout', $1, true)")
            .bind(WHERE_TIMEOUT)
            .execute(&mut *tx)
            .await?;
    }
    let mut rows = db::list(&mut tx, &query)
        .await
        .map_err(|err| where_error(err, query.filter.is_some()))?;
    tx.commit().await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|row| URL_SAFE_NO_PAD.encode(&row.id))
    } else {
        None
    };
    Ok(Json(RoomPage {
        items: rows.into_iter().map(RoomOut::from).collect(),
        next_cursor,
    }))
}

fn decode_cursor(cursor: &str) -> Result<String, Error> {
    let invalid = || Error::bad_request("invalid-cursor", "cursor is not one this server issued");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let id = String::from_utf8(bytes).map_err(|_| invalid())?;
    RoomId::parse(&id).map_err(|_| invalid())?;
    Ok(id)
}

/// A bad jsonpath is the client's mistake: syntax errors (42601), data
/// exceptions (class 22) and our statement timeout (57014) become 400s.
fn where_error(err: sqlx::Error, has_filter: bool) -> Error {
    if let (true, sqlx::Error::Database(db)) = (has_filter, &err) {
        let code = db.code().unwrap_or_default();
        if code == "57014" {
            return Error::bad_request(
                "invalid-where",
                format!("the where expression took longer than {WHERE_TIMEOUT}"),
            );
        }
        if code == "42601" || code.starts_with("22") {
            return Error::bad_request(
                "invalid-where",
                format!("invalid jsonpath in where: {}", db.message()),
            );
        }
    }
    err.into()
}

/// Get a room: metadata, version, timestamps, occupancy, active session.
#[utoipa::path(
    get, path = "/v1/rooms/{room}", tag = "rooms", operation_id = "rooms.get",
    params(("room" = String, Path, description = "Room id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The room", body = RoomOut,
         headers(("ETag" = String, description = "The metadata version, quoted"))),
        (status = 304, description = "Unchanged since the If-None-Match version"),
        (status = 400, description = "Invalid room id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow read on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn get_room(
    access: RoomAccess<Read>,
    preconditions: Preconditions,
    State(state): State<AppState>,
) -> Result<Response, Error> {
    let row = find_room(&state, &access.room).await?;
    if preconditions.not_modified(row.version) {
        return Ok(not_modified(row.version));
    }
    let version = row.version;
    Ok(with_etag(version, Json(RoomOut::from(row))))
}

/// Delete a room: its metadata goes; a tombstone keeps its version counter.
#[utoipa::path(
    delete, path = "/v1/rooms/{room}", tag = "rooms", operation_id = "rooms.delete",
    params(
        ("room" = String, Path, description = "Room id"),
        ("If-Match" = Option<String>, Header, description = "Delete only at this version"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid room id or precondition header", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow delete on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn delete_room(
    access: RoomAccess<Delete>,
    preconditions: Preconditions,
    State(state): State<AppState>,
) -> Result<StatusCode, Error> {
    let mut tx = state.db.begin().await?;
    let row = db::lock(&mut tx, access.room.as_str())
        .await?
        .filter(RoomRow::is_live)
        .ok_or_else(|| room_not_found(&access.room))?;
    preconditions.check_write(Some(row.version))?;
    db::tombstone(&mut tx, access.room.as_str()).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Get the room's metadata document.
///
/// The body is the bare document; its version is in `ETag`.
#[utoipa::path(
    get, path = "/v1/rooms/{room}/metadata", tag = "rooms", operation_id = "rooms.metadata.get",
    params(
        ("room" = String, Path, description = "Room id"),
        ("If-None-Match" = Option<String>, Header, description = "Answer 304 if this version is current"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The document", body = Object,
         headers(("ETag" = String, description = "The version, quoted")),
         example = json!({"topic": "standup", "locked": false})),
        (status = 304, description = "Unchanged since the If-None-Match version"),
        (status = 400, description = "Invalid room id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow read on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn get_room_metadata(
    access: RoomAccess<Read>,
    preconditions: Preconditions,
    State(state): State<AppState>,
) -> Result<Response, Error> {
    let row = find_room(&state, &access.room).await?;
    if preconditions.not_modified(row.version) {
        return Ok(not_modified(row.version));
    }
    Ok(with_etag(row.version, Json(row.metadata.0)))
}

/// Replace the room's metadata, creating the room if it does not exist.
#[utoipa::path(
    put, path = "/v1/rooms/{room}/metadata", tag = "rooms", operation_id = "rooms.metadata.put",
    params(
        ("room" = String, Path, description = "Room id"),
        ("If-Match" = Option<String>, Header, description = "Write only at this version"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: create only"),
    ),
    request_body(content = Object, content_type = "application/json",
                 example = json!({"topic": "standup", "locked": false})),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Replaced", body = Object,
         headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 201, description = "Created the room", body = Object,
         headers(("ETag" = String, description = "The new version, quoted"),
                 ("Location" = String, description = "The document's URL"))),
        (status = 400, description = "Invalid room id, JSON, shape or nesting", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow write_room on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 412, description = "If-Match / If-None-Match failed", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body or document too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn put_room_metadata(
    access: RoomAccess<WriteRoom>,
    preconditions: Preconditions,
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Error> {
    let write = Write::replace(content_type(&headers), &body)?;
    let (row, created) =
        write_metadata(&state, &access.room, &preconditions, &write, Absent::Create).await?;
    let version = row.version;
    let mut response = with_etag(version, Json(row.metadata.0));
    if created {
        *response.status_mut() = StatusCode::CREATED;
        let location = format!("/v1/rooms/{}/metadata", access.room);
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    Ok(response)
}

/// The `strategy` of a plain-JSON PATCH.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PatchParams {
    /// `merge` (default: top-level keys) or `deepMerge` (recursive);
    /// only with `Content-Type: application/json`.
    strategy: Option<String>,
}

/// Update the room's metadata; the strategy follows the `Content-Type`.
///
/// - `application/merge-patch+json`: RFC 7396, `null` removes a key;
/// - `application/json-patch+json`: RFC 6902, `test` ops are compare-and-set;
/// - `application/json` with `?strategy=merge` (default, top-level keys) or
///   `?strategy=deepMerge` (recursive; `null` is stored).
///
/// Applied atomically under the row lock: concurrent patches never lose
/// each other's changes.
#[utoipa::path(
    patch, path = "/v1/rooms/{room}/metadata", tag = "rooms", operation_id = "rooms.metadata.patch",
    params(
        ("room" = String, Path, description = "Room id"),
        PatchParams,
        ("If-Match" = Option<String>, Header, description = "Write only at this version"),
    ),
    request_body(content(
        (Object = "application/merge-patch+json", example = json!({"topic": "retro", "draft": null})),
        (Object = "application/json-patch+json", example = json!([
            {"op": "test", "path": "/count", "value": 1},
            {"op": "replace", "path": "/count", "value": 2}
        ])),
        (Object = "application/json", example = json!({"topic": "retro"})),
    )),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated document", body = Object,
         headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 400, description = "Invalid room id, JSON, patch, strategy, shape or nesting", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow write_room on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "A JSON Patch test failed", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 412, description = "If-Match failed", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body or resulting document too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported Content-Type", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "A JSON Patch path does not exist", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn patch_room_metadata(
    access: RoomAccess<WriteRoom>,
    preconditions: Preconditions,
    State(state): State<AppState>,
    Query(params): Query<PatchParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Error> {
    let write = Write::patch(content_type(&headers), params.strategy.as_deref(), &body)?;
    let (row, _) = write_metadata(
        &state,
        &access.room,
        &preconditions,
        &write,
        Absent::NotFound,
    )
    .await?;
    Ok(with_etag(row.version, Json(row.metadata.0)))
}

/// Reset the room's metadata to `{}` (a new version); the room stays.
#[utoipa::path(
    delete, path = "/v1/rooms/{room}/metadata", tag = "rooms", operation_id = "rooms.metadata.delete",
    params(
        ("room" = String, Path, description = "Room id"),
        ("If-Match" = Option<String>, Header, description = "Reset only at this version"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Reset to {}",
         headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 400, description = "Invalid room id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow write_room on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 412, description = "If-Match failed", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn delete_room_metadata(
    access: RoomAccess<WriteRoom>,
    preconditions: Preconditions,
    State(state): State<AppState>,
) -> Result<Response, Error> {
    let (row, _) = write_metadata(
        &state,
        &access.room,
        &preconditions,
        &Write::reset(),
        Absent::NotFound,
    )
    .await?;
    Ok(with_etag(row.version, StatusCode::NO_CONTENT))
}

/// What a write does when the room does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absent {
    Create,
    NotFound,
}

/// Applies `write` to the room's document under its row lock: read, check
/// preconditions, patch, check limits and store happen in one transaction,
/// so concurrent writers queue instead of overwriting each other.
/// Returns the stored row and whether the room was created.
async fn write_metadata(
    state: &AppState,
    room: &RoomId,
    preconditions: &Preconditions,
    write: &Write,
    absent: Absent,
) -> Result<(RoomRow, bool), Error> {
    let mut tx = state.db.begin().await?;
    let row = match absent {
        Absent::Create => db::lock_or_insert(&mut tx, room.as_str()).await?,
        Absent::NotFound => db::lock(&mut tx, room.as_str())
            .await?
            .filter(RoomRow::is_live)
            .ok_or_else(|| room_not_found(room))?,
    };
    let exists = row.is_live();
    preconditions.check_write(exists.then_some(row.version))?;
    let current = if exists {
        row.metadata.0
    } else {
        Value::Object(Map::new())
    };
    let document = write.apply(&current)?;
    state.settings.limits.check(&document)?;
    let stored = db::store_metadata(&mut tx, room.as_str(), &document, row.version + 1).await?;
    tx.commit().await?;
    Ok((stored, !exists))
}

async fn find_room(state: &AppState, room: &RoomId) -> Result<RoomRow, Error> {
    db::find(&state.db, room.as_str())
        .await?
        .ok_or_else(|| room_not_found(room))
}

fn room_not_found(room: &RoomId) -> Error {
    Error::not_found("room-not-found", format!("room {room} does not exist"))
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
}

fn with_etag(version: i64, body: impl IntoResponse) -> Response {
    ([(header::ETAG, etag(version))], body).into_response()
}

fn not_modified(version: i64) -> Response {
    with_etag(version, StatusCode::NOT_MODIFIED)
}
