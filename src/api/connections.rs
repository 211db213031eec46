//! Connections: create, read, heartbeat, disconnect, list, and their metadata.

use std::marker::PhantomData;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::pagination::{Page, decode_cursor, encode_cursor, page_limit};
use super::rooms::{StrategyParams, content_type, not_modified, with_etag};
use crate::auth::AuthUser;
use crate::auth::policy::{self, ConnectionRule, Manage, View, WriteMetadata};
use crate::document::{Preconditions, Write, json_body};
use crate::error::{Error, ProblemDetails};
use crate::extract::{Body, Query};
use crate::ids::{RoomId, parse_uuid};
use crate::presence::{Connection, connections, occupants};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_connection, list_connections))
        .routes(routes!(get_connection, delete_connection))
        .routes(routes!(heartbeat))
        .routes(routes!(
            get_connection_metadata,
            put_connection_metadata,
            patch_connection_metadata
        ))
}

/// The connection in the path, loaded and checked against rule `R`: a
/// connection the caller can neither see nor act on is a 404, one it sees
/// but may not act on a 403.
pub struct ConnectionAccess<R> {
    pub user: AuthUser,
    pub connection: Connection,
    rule: PhantomData<R>,
}

impl<R: ConnectionRule> FromRequestParts<AppState> for ConnectionAccess<R> {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        let id = connection_id(parts, state).await?;
        let connection =
            policy::authorize_as::<R>(&user, &id, connections::load(state, &id).await?)?;
        Ok(Self {
            user,
            connection,
            rule: PhantomData,
        })
    }
}

/// The validated connection `{id}` of the path, for handlers whose
/// permission rule is not a plain [`ConnectionRule`].
pub struct ConnectionPath(pub String);

impl FromRequestParts<AppState> for ConnectionPath {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(connection_id(parts, state).await?))
    }
}

/// The validated `{id}` of the path, canonical.
pub async fn connection_id(parts: &mut Parts, state: &AppState) -> Result<String, Error> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| Error::bad_request("invalid-connection-id", "the id is not valid UTF-8"))?;
    let raw = params
        .iter()
        .find_map(|(name, value)| (name == "id").then_some(value))
        .ok_or_else(|| anyhow::anyhow!("connection route without {{id}}"))?;
    Ok(parse_uuid(raw, "connection")?.to_string())
}

/// A connection.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "01937b2e-8f4a-7cc3-9a6e-3c1b5d2f4e6a", "owner": "alice",
    "metadata": {"name": "Alice", "muted": false}, "version": 1, "rooms": ["lobby"],
    "created_at": "2026-11-22T19:00:00Z", "expires_at": "2026-11-22T19:00:30Z"
}))]
pub struct ConnectionOut {
    pub id: String,
    /// The token subject that created it.
    pub owner: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub version: i64,
    /// Rooms it is in.
    pub rooms: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// When the lease runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

impl ConnectionOut {
    /// The connection as `viewer` is shown it: only the rooms it may see.
    pub fn seen_by(viewer: &AuthUser, conn: Connection) -> Self {
        let rooms = policy::visible_rooms(viewer, &conn);
        Self {
            id: conn.id,
            owner: conn.owner,
            metadata: conn.metadata,
            version: conn.version,
            rooms,
            created_at: conn.created_at,
            expires_at: conn.expires_at,
        }
    }
}

/// `POST /v1/connections` body; both fields optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionIn {
    /// Initial metadata (a JSON object); absent: `{}` at version 0.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Lease length in seconds (default 30, within the configured bounds).
    pub ttl_seconds: Option<u64>,
}

/// Create a connection owned by the token's subject.
///
/// It lives while it heartbeats before its lease runs out (or, later, while
/// its event stream is open); when it ends it leaves every room.
#[utoipa::path(
    post, path = "/v1/connections", tag = "connections", operation_id = "connections.create",
    request_body(content = Option<ConnectionIn>, content_type = "application/json", description = "Optional: an empty body creates a connection with `{}` metadata and the default lease",
                 example = json!({"metadata": {"name": "Alice"}, "ttl_seconds": 60})),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = ConnectionOut,
         headers(("ETag" = String, description = "The metadata version, quoted"),
                 ("Location" = String, description = "The connection's URL")),
         links(("connection" = (operation_id = "connections.get", parameters(("id" = "$response.body#/id")))),
               ("metadata" = (operation_id = "connections.metadata.patch", parameters(("id" = "$response.body#/id")))),
               ("heartbeat" = (operation_id = "connections.heartbeat", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Invalid body, TTL or metadata", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body or metadata too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 429, description = "The subject holds too many connections", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn create_connection(
    user: AuthUser,
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Error> {
    let input: ConnectionIn = if body.is_empty() {
        ConnectionIn::default()
    } else {
        let value = json_body(content_type(&headers), &body)?;
        // serde would also fill the struct from an array (`[null, null]`).
        if !value.is_object() {
            return Err(Error::bad_request(
                "invalid-body",
                "the body must be a JSON object",
            ));
        }
        serde_json::from_value(value).map_err(|err| {
            Error::bad_request("invalid-body", format!("invalid connection: {err}"))
        })?
    };
    let presence = &state.settings.presence;
    let ttl = input
        .ttl_seconds
        .map_or(presence.default_ttl, Duration::from_secs);
    if !(presence.min_ttl..=presence.max_ttl).contains(&ttl) {
        return Err(Error::bad_request(
            "invalid-ttl",
            format!(
                "ttl_seconds must be between {} and {}",
                presence.min_ttl.as_secs(),
                presence.max_ttl.as_secs()
            ),
        ));
    }
    if let Some(metadata) = &input.metadata {
        state.settings.limits.check(metadata)?;
    }
    let conn = connections::create(&state, &user.subject, input.metadata, ttl).await?;
    let location = format!("/v1/connections/{}", conn.id);
    let mut response = with_etag(conn.version, Json(ConnectionOut::seen_by(&user, conn)));
    *response.status_mut() = StatusCode::CREATED;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Filters and paging for `GET /v1/connections`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListConnectionsParams {
    /// Only connections in this room.
    room: Option<String>,
    /// Page size, 1–500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List connections: an admin sees all, anyone else their own.
#[utoipa::path(
    get, path = "/v1/connections", tag = "connections", operation_id = "connections.list",
    params(ListConnectionsParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of connections", body = Page<ConnectionOut>),
        (status = 400, description = "Bad room, limit or cursor", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn list_connections(
    user: AuthUser,
    State(state): State<AppState>,
    Query(params): Query<ListConnectionsParams>,
) -> Result<Json<Page<ConnectionOut>>, Error> {
    let limit = page_limit(params.limit)?;
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut items = match params.room.as_deref() {
        Some(room) => {
            let room = RoomId::parse(room)?;
            in_room(&state, &user, &room, after, limit).await?
        }
        None => {
            let index = if policy::lists_all_connections(&user) {
                state.redis_keys.all_connections()
            } else {
                state.redis_keys.subject_connections(&user.subject)
            };
            from_index(&state, &index, after, limit + 1, |_| true).await?
        }
    };
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|conn| encode_cursor(&conn.id))
    } else {
        None
    };
    Ok(Json(Page {
        items: items
            .into_iter()
            .map(|conn| ConnectionOut::seen_by(&user, conn))
            .collect(),
        next_cursor,
    }))
}

/// Up to `want` live connections of `index` after `after`, in id order,
/// that pass `keep`. Ids whose connection just ended are skipped; reading
/// goes on until the page is full or the index ends.
async fn from_index(
    state: &AppState,
    index: &str,
    mut after: Option<String>,
    want: usize,
    keep: impl Fn(&Connection) -> bool,
) -> Result<Vec<Connection>, Error> {
    let mut items = Vec::with_capacity(want);
    loop {
        let ids = connections::page_ids(state, index, after.as_deref(), want).await?;
        let exhausted = ids.len() < want;
        for id in &ids {
            if let Some(conn) = connections::load(state, id).await?
                && keep(&conn)
            {
                items.push(conn);
            }
        }
        after = ids.last().cloned();
        if exhausted || items.len() >= want {
            items.truncate(want);
            return Ok(items);
        }
    }
}

/// The caller's connections in `room` (an admin's: all of them), one more
/// than `limit` if there are more. What this reads is bounded by the page
/// (admin) or by the caller's own connections (the per-subject quota),
/// never by how many others are in the room.
async fn in_room(
    state: &AppState,
    user: &AuthUser,
    room: &RoomId,
    after: Option<String>,
    limit: usize,
) -> Result<Vec<Connection>, Error> {
    let in_it = |conn: &Connection| conn.rooms.contains_key(room.as_str());
    if !policy::lists_all_connections(user) {
        let index = state.redis_keys.subject_connections(&user.subject);
        return from_index(state, &index, after, limit + 1, in_it).await;
    }
    let mut items = Vec::with_capacity(limit + 1);
    let mut after = after;
    loop {
        let page = occupants::page(
            state,
            room.as_str(),
            after.as_deref(),
            limit + 1 - items.len(),
        )
        .await?;
        for occupant in &page.occupants {
            if let Some(conn) = connections::load(state, &occupant.id).await? {
                items.push(conn);
            }
        }
        match page.next {
            Some(next) if items.len() <= limit => after = Some(next),
            _ => return Ok(items),
        }
    }
}

/// Get a connection (the owner, an admin, or `read` on a room it is in).
#[utoipa::path(
    get, path = "/v1/connections/{id}", tag = "connections", operation_id = "connections.get",
    params(("id" = String, Path, description = "Connection id", format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The connection", body = ConnectionOut,
         headers(("ETag" = String, description = "The metadata version, quoted"))),
        (status = 400, description = "Invalid id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such connection, or not visible", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn get_connection(access: ConnectionAccess<View>) -> Response {
    let conn = access.connection;
    with_etag(
        conn.version,
        Json(ConnectionOut::seen_by(&access.user, conn)),
    )
}

/// Disconnect: the connection leaves every room (`presence.left`, reason
/// `disconnected`) and its metadata is gone.
#[utoipa::path(
    delete, path = "/v1/connections/{id}", tag = "connections", operation_id = "connections.delete",
    params(("id" = String, Path, description = "Connection id", format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Disconnected"),
        (status = 400, description = "Invalid id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not the owner", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such connection, or not visible", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis or Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn delete_connection(
    access: ConnectionAccess<Manage>,
    State(state): State<AppState>,
) -> Result<StatusCode, Error> {
    let id = &access.connection.id;
    if connections::end(&state, id, true, "disconnected", &access.user.subject).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(connections::not_found(id))
    }
}

/// Renew the lease for another `ttl_seconds`.
#[utoipa::path(
    post, path = "/v1/connections/{id}/heartbeat", tag = "connections", operation_id = "connections.heartbeat",
    params(("id" = String, Path, description = "Connection id", format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Lease renewed"),
        (status = 400, description = "Invalid id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not the owner", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such connection (or its lease already ran out)", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn heartbeat(
    access: ConnectionAccess<Manage>,
    State(state): State<AppState>,
) -> Result<StatusCode, Error> {
    let id = &access.connection.id;
    connections::heartbeat(&state, id)
        .await?
        .ok_or_else(|| connections::not_found(id))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Get the connection's metadata document (version in `ETag`).
#[utoipa::path(
    get, path = "/v1/connections/{id}/metadata", tag = "connections", operation_id = "connections.metadata.get",
    params(
        ("id" = String, Path, description = "Connection id", format = Uuid),
        ("If-None-Match" = Option<String>, Header, description = "Answer 304 if this version is current", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The document", body = Object,
         headers(("ETag" = String, description = "The version, quoted"))),
        (status = 304, description = "Unchanged since the If-None-Match version"),
        (status = 400, description = "Invalid id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such connection, or not visible", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn get_connection_metadata(
    access: ConnectionAccess<View>,
    preconditions: Preconditions,
) -> Response {
    let conn = access.connection;
    if preconditions.not_modified(conn.version) {
        return not_modified(conn.version);
    }
    with_etag(conn.version, Json(conn.metadata))
}

/// Replace the connection's metadata.
#[utoipa::path(
    put, path = "/v1/connections/{id}/metadata", tag = "connections", operation_id = "connections.metadata.put",
    params(
        ("id" = String, Path, description = "Connection id", format = Uuid),
        ("If-Match" = Option<String>, Header, description = "Write only at this version", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
    ),
    request_body(content = Object, content_type = "application/json", example = json!({"muted": true})),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Replaced", body = Object,
         headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 400, description = "Invalid id, JSON, shape or nesting", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed to write this connection's metadata", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such connection, or not visible", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 412, description = "If-Match / If-None-Match failed", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body or document too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn put_connection_metadata(
    access: ConnectionAccess<WriteMetadata>,
    preconditions: Preconditions,
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Error> {
    let write = Write::replace(content_type(&headers), &body)?;
    write_metadata(&state, &access, &preconditions, &write).await
}

/// Update the connection's metadata; the strategy follows the `Content-Type`
/// exactly as for room metadata.
#[utoipa::path(
    patch, path = "/v1/connections/{id}/metadata", tag = "connections", operation_id = "connections.metadata.patch",
    params(
        ("id" = String, Path, description = "Connection id", format = Uuid),
        StrategyParams,
        ("If-Match" = Option<String>, Header, description = "Write only at this version", pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#),
    ),
    request_body(content(
        (Object = "application/merge-patch+json", example = json!({"muted": null})),
        (Object = "application/json-patch+json", example = json!([{"op": "replace", "path": "/muted", "value": true}])),
        (Object = "application/json", example = json!({"muted": true})),
    )),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated document", body = Object,
         headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 400, description = "Invalid id, JSON, patch, strategy, shape or nesting", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed to write this connection's metadata", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such connection, or not visible", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "A JSON Patch test failed", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 412, description = "If-Match failed", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body or resulting document too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported Content-Type", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "A JSON Patch path does not exist", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn patch_connection_metadata(
    access: ConnectionAccess<WriteMetadata>,
    preconditions: Preconditions,
    State(state): State<AppState>,
    Query(params): Query<StrategyParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Error> {
    let write = Write::patch(content_type(&headers), params.strategy.as_deref(), &body)?;
    write_metadata(&state, &access, &preconditions, &write).await
}

async fn write_metadata<R>(
    state: &AppState,
    access: &ConnectionAccess<R>,
    preconditions: &Preconditions,
    write: &Write,
) -> Result<Response, Error> {
    let conn = connections::write_metadata(
        state,
        &access.connection.id,
        preconditions,
        write,
        &access.user.subject,
    )
    .await?;
    Ok(with_etag(conn.version, Json(conn.metadata)))
}
