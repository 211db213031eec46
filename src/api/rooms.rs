//! Rooms: the envelope, listing, deletion, and the metadata document.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::sessions::SessionOut;
use crate::auth::{Delete, Read, RoomAccess, WriteRoom};
use crate::db::metadata_batch::StoreMetadata;
use crate::db::rooms::{self as db, RoomRow};
use crate::db::sessions;
use crate::document::cache::{CachedDocument, Lookup};
use crate::document::{Preconditions, Write, etag};
use crate::error::{Error, ProblemDetails};
use crate::events::{self, Event, EventKind};
use crate::extract::{Body, Query};
use crate::ids::RoomId;
use crate::presence::{occupancy, teardown};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(super::room_list::list_rooms))
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
    pub session: Option<SessionOut>,
}

impl RoomOut {
    /// The room with its live occupancy (Redis) and active session (Postgres).
    pub(super) async fn load(state: &AppState, row: RoomRow) -> Result<Self, Error> {
        let occupancy = occupancy::occupancy(state, &row.id).await?;
        let session = sessions::active(&state.db, &row.id)
            .await?
            .map(|session| SessionOut::new(session, occupancy));
        Ok(Self {
            id: row.id,
            metadata: row.metadata.0,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            occupancy,
            session,
        })
    }
}

/// Get a room: metadata, version, timestamps, occupancy, active session.
#[utoipa::path(
    get, path = "/v1/rooms/{room}", tag = "rooms", operation_id = "rooms.get",
    params(("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")),
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
    Ok(with_etag(version, Json(RoomOut::load(&state, row).await?)))
}

/// Delete a room: every occupant is evicted (`presence.left`, reason
/// `evicted`), the session ends, then the room and its metadata go; a
/// tombstone keeps its version counter and its session history stays.
#[utoipa::path(
    delete, path = "/v1/rooms/{room}", tag = "rooms", operation_id = "rooms.delete",
    params(
        ("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"),
        ("If-Match" = Option<String>, Header, description = "Delete only at this version", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid room id or precondition header", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow delete on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres or Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn delete_room(
    access: RoomAccess<Delete>,
    preconditions: Preconditions,
    State(state): State<AppState>,
) -> Result<StatusCode, Error> {
    let room = &access.room;
    let actor = access.user.subject.as_str();
    let row = find_room(&state, room).await?;
    preconditions.check_write(Some(row.version))?;
    teardown::delete(&state, room, actor, |version| {
        preconditions.check_write(Some(version))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Get the room's metadata document.
///
/// The body is the bare document; its version is in `ETag`.
#[utoipa::path(
    get, path = "/v1/rooms/{room}/metadata", tag = "rooms", operation_id = "rooms.metadata.get",
    params(
        ("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"),
        ("If-None-Match" = Option<String>, Header, description = "Answer 304 if this version is current", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
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
    let room = access.room.as_str();
    let lookup = state.documents.lookup(room);
    crate::metrics::document_cache_lookup(matches!(lookup, Lookup::Hit(_)));
    let document = match lookup {
        Lookup::Hit(document) => document,
        Lookup::Miss(ticket) => {
            let (version, json, seq, row) = db::find_document(&state.db, room)
                .await?
                .ok_or_else(|| room_not_found(&access.room))?;
            let document = CachedDocument {
                version,
                json: json.into(),
                seq,
                row,
            };
            state.documents.fill(room, ticket, document.clone());
            document
        }
    };
    if preconditions.not_modified(document.version) {
        return Ok(not_modified(document.version));
    }
    let json = [(header::CONTENT_TYPE, "application/json")];
    Ok(with_etag(document.version, (json, document.json)))
}

/// Replace the room's metadata, creating the room if it does not exist.
#[utoipa::path(
    put, path = "/v1/rooms/{room}/metadata", tag = "rooms", operation_id = "rooms.metadata.put",
    params(
        ("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"),
        ("If-Match" = Option<String>, Header, description = "Write only at this version", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
        ("If-None-Match" = Option<String>, Header, description = "`*`: create only", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
    ),
    request_body(content = Object, content_type = "application/json",
                 example = json!({"topic": "standup", "locked": false})),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Replaced", body = Object,
         headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 201, description = "Created the room", body = Object,
         headers(("ETag" = String, description = "The new version, quoted"),
                 ("Location" = String, description = "The document's URL")),
         links(("room" = (operation_id = "rooms.get", parameters(("room" = "$request.path.room")))),
               ("patch" = (operation_id = "rooms.metadata.patch", parameters(("room" = "$request.path.room")))))),
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
    let (row, created) = write_metadata(
        &state,
        &access.room,
        &access.user.subject,
        &preconditions,
        &write,
        Absent::Create,
    )
    .await?;
    let mut response = written_response(row);
    if created {
        *response.status_mut() = StatusCode::CREATED;
        let location = format!("/v1/rooms/{}/metadata", access.room);
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    Ok(response)
}

/// The `strategy` of a plain-JSON PATCH, shared by every metadata scope.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StrategyParams {
    /// `merge` (default: top-level keys) or `deepMerge` (recursive);
    /// only with `Content-Type: application/json`.
    #[param(pattern = "^(merge|deepMerge)$")]
    pub(super) strategy: Option<String>,
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
        ("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"),
        StrategyParams,
        ("If-Match" = Option<String>, Header, description = "Write only at this version", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
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
    Query(params): Query<StrategyParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Error> {
    let write = Write::patch(content_type(&headers), params.strategy.as_deref(), &body)?;
    let (row, _) = write_metadata(
        &state,
        &access.room,
        &access.user.subject,
        &preconditions,
        &write,
        Absent::NotFound,
    )
    .await?;
    Ok(written_response(row))
}

/// Reset the room's metadata to `{}` (a new version); the room stays.
#[utoipa::path(
    delete, path = "/v1/rooms/{room}/metadata", tag = "rooms", operation_id = "rooms.metadata.delete",
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
        &access.user.subject,
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

/// Unlocked attempts at a write to an existing room before it queues for
/// the row lock. An attempt is two statements and no transaction; it fails
/// only when another write to the same room lands between them.
const UNLOCKED_ATTEMPTS: usize = 2;

/// The document a write starts from, as read.
struct Current {
    metadata: Value,
    version: i64,
    live: bool,
    /// The row version a cached copy was taken at; `None` for a fresh read.
    row: Option<i64>,
}

impl From<RoomRow> for Current {
    fn from(row: RoomRow) -> Self {
        Self {
            live: row.is_live(),
            metadata: row.metadata.0,
            version: row.version,
            row: None,
        }
    }
}

/// This instance's cached copy of the room's document, if it has one. It
/// may be stale: a write starting from it stores nothing unless Postgres
/// still holds that very row version, and decides nothing against the
/// client on it.
fn cached(state: &AppState, room: &RoomId) -> Option<Current> {
    let Lookup::Hit(document) = state.documents.lookup(room.as_str()) else {
        return None;
    };
    let metadata = serde_json::from_slice(&document.json).ok()?;
    Some(Current {
        metadata,
        version: document.version,
        live: true,
        row: Some(document.row),
    })
}

/// Applies `write` to the room's document atomically: concurrent writers
/// never overwrite each other's changes. Returns the stored document (also
/// left in this instance's document cache) and whether the room was
/// created.
///
/// A write to an existing room first tries without a lock: take the
/// document (from the document cache if it holds the room, else from
/// Postgres), patch, check limits and preconditions, then store it and
/// record its event in one statement that only succeeds if the row is still
/// at the version read (so `If-Match` is decided by Postgres either way). A
/// refusal (412, 409, 422, 413) on a cached copy is decided again on
/// Postgres' row. Under contention for one room, or to create a room, it
/// reads and writes under the row lock in one transaction, where writers
/// queue instead of retrying.
async fn write_metadata(
    state: &AppState,
    room: &RoomId,
    actor: &str,
    preconditions: &Preconditions,
    write: &Write,
    absent: Absent,
) -> Result<(CachedDocument, bool), Error> {
    if absent == Absent::NotFound {
        let mut from_cache = cached(state, room);
        for _ in 0..UNLOCKED_ATTEMPTS + usize::from(from_cache.is_some()) {
            let was_cached = from_cache.is_some();
            let current = match from_cache.take() {
                Some(current) => current,
                None => db::find(&state.db, room.as_str())
                    .await?
                    .ok_or_else(|| room_not_found(room))?
                    .into(),
            };
            let Prepared {
                json,
                payload,
                written,
            } = match prepare(state, room, actor, preconditions, write, &current) {
                Ok(prepared) => prepared,
                Err(Error::Client { .. }) if was_cached => continue,
                Err(err) => return Err(err),
            };
            let ticket = state.documents.ticket(room.as_str());
            let stored = state
                .metadata_batches
                .store(StoreMetadata {
                    room: room.as_str().to_owned(),
                    metadata: json,
                    read_version: current.version,
                    read_row: current.row,
                    kind: written.event.kind.as_str(),
                    payload,
                })
                .await?;
            if let Some(stored) = stored {
                let (stored, event) = written.stored(stored);
                state
                    .documents
                    .store_written(room.as_str(), ticket, stored.clone());
                events::publish(state, std::slice::from_ref(&event)).await;
                return Ok((stored, false));
            }
        }
    }
    let mut tx = crate::db::begin(&state.db).await?;
    let row = match absent {
        Absent::Create => db::lock_or_insert(&mut tx, room.as_str()).await?,
        Absent::NotFound => db::lock(&mut tx, room.as_str())
            .await?
            .filter(RoomRow::is_live)
            .ok_or_else(|| room_not_found(room))?,
    };
    let exists = row.is_live();
    let current = Current::from(row);
    let prepared = prepare(state, room, actor, preconditions, write, &current)?;
    let ticket = state.documents.ticket(room.as_str());
    let stored = db::store_metadata(
        &mut *tx,
        room.as_str(),
        &prepared.json,
        (current.version, current.live, current.row),
        (prepared.written.event.kind.as_str(), &prepared.payload),
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("room {room} changed under its row lock"))?;
    tx.commit().await?;
    let (stored, event) = prepared.written.stored(stored);
    state
        .documents
        .store_written(room.as_str(), ticket, stored.clone());
    events::publish(state, std::slice::from_ref(&event)).await;
    Ok((stored, !exists))
}

/// A write applied to the document it started from, ready to store.
struct Prepared {
    /// The new document and the event's outbox payload, as Postgres stores
    /// them.
    json: Box<RawValue>,
    payload: Box<RawValue>,
    written: Written,
}

/// What a write answers and publishes once stored.
struct Written {
    /// The new document's JSON text.
    json: bytes::Bytes,
    version: i64,
    event: Event,
}

impl Written {
    /// The document as stored (at the event's sequence number `seq` and
    /// row version `row`), and its event.
    fn stored(mut self, (seq, row): (i64, i64)) -> (CachedDocument, Event) {
        self.event.outbox = Some(seq);
        let stored = CachedDocument {
            version: self.version,
            json: self.json,
            seq,
            row,
        };
        (stored, self.event)
    }
}

/// Applies `write` to `current`: checks the preconditions and limits, and
/// builds the event.
fn prepare(
    state: &AppState,
    room: &RoomId,
    actor: &str,
    preconditions: &Preconditions,
    write: &Write,
    current: &Current,
) -> Result<Prepared, Error> {
    let existing = current.live.then_some((&current.metadata, current.version));
    let document = write.apply_checked(existing, preconditions, &state.settings.limits)?;
    let version = current.version + 1;
    let event = if write.is_reset() {
        Event::new(
            EventKind::RoomMetadataDeleted,
            room.as_str(),
            actor,
            serde_json::json!({"version": version}),
        )
    } else {
        Event::metadata_updated(
            EventKind::RoomMetadataUpdated,
            room.as_str(),
            actor,
            (&document, version),
            write,
            None,
            &state.settings.limits,
        )
    };
    let json = serde_json::value::to_raw_value(&document).map_err(anyhow::Error::from)?;
    let payload =
        serde_json::value::to_raw_value(&event.outbox_payload()).map_err(anyhow::Error::from)?;
    Ok(Prepared {
        written: Written {
            json: bytes::Bytes::copy_from_slice(json.get().as_bytes()),
            version,
            event,
        },
        json,
        payload,
    })
}

/// A written document, as stored, with its version.
fn written_response(written: CachedDocument) -> Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    with_etag(written.version, (json, written.json))
}

pub(super) async fn find_room(state: &AppState, room: &RoomId) -> Result<RoomRow, Error> {
    db::find(&state.db, room.as_str())
        .await?
        .ok_or_else(|| room_not_found(room))
}

pub(super) fn room_not_found(room: &RoomId) -> Error {
    Error::not_found("room-not-found", format!("room {room} does not exist"))
}

pub(super) fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
}

pub(super) fn with_etag(version: i64, body: impl IntoResponse) -> Response {
    ([(header::ETAG, etag(version))], body).into_response()
}

pub(super) fn not_modified(version: i64) -> Response {
    with_etag(version, StatusCode::NOT_MODIFIED)
}
