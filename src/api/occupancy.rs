//! Occupancy: joining and leaving rooms, listing occupants, clearing a room.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::connections::ConnectionPath;
use super::pagination::{Page, PageParams, decode_cursor, encode_cursor, page_limit};
use super::rooms::find_room;
use crate::auth::policy::{self, Manage, RoomView};
use crate::auth::{AuthUser, Join, Moderate, Read, RoomAccess, RoomPath};
use crate::error::{Error, ProblemDetails};
use crate::extract::Query;
use crate::presence::occupancy::{Leave, Remover};
use crate::presence::{connections, join, occupancy, occupants, teardown};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(join_room, leave_room))
        .routes(routes!(list_occupants))
        .routes(routes!(clear_room))
}

/// The outcome of a join.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "room": "lobby", "connection_id": "01937b2e-8f4a-7cc3-9a6e-3c1b5d2f4e6a",
    "joined_at": "2026-11-22T19:00:00Z", "occupancy": 2,
    "session_id": "01937b2e-9000-7cc3-9a6e-3c1b5d2f4e6a"
}))]
pub struct Membership {
    pub room: String,
    pub connection_id: String,
    pub joined_at: DateTime<Utc>,
    /// Connections in the room after the join; null without `read` on it.
    pub occupancy: Option<i64>,
    /// The room's active session; null without `read` on it.
    pub session_id: Option<String>,
}

/// Join a connection to a room (needs `join`; only its owner or an admin).
///
/// The first connection into an empty room starts a session; the answer
/// comes once that session is durable. Joining a room that does not exist
/// creates it with `{}` metadata (unless `METACAST_AUTO_CREATE_ROOMS=false`).
#[utoipa::path(
    put, path = "/v1/rooms/{room}/connections/{id}", tag = "presence", operation_id = "presence.join",
    params(
        ("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"),
        ("id" = String, Path, description = "Connection id", format = Uuid),
    ),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Joined", body = Membership,
         links(("session" = (operation_id = "sessions.get", parameters(("id" = "$response.body#/session_id")))),
               ("occupants" = (operation_id = "presence.list", parameters(("room" = "$request.path.room")))))),
        (status = 200, description = "Already in the room", body = Membership),
        (status = 400, description = "Invalid room or connection id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "No join on this room, or not the connection's owner", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such connection, or the room does not exist and is not auto-created", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 429, description = "The connection is in too many rooms", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis or Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn join_room(
    access: RoomAccess<Join>,
    ConnectionPath(id): ConnectionPath,
    State(state): State<AppState>,
) -> Result<Response, Error> {
    let user = &access.user;
    let owner = (!user.permissions.admin).then_some(user.subject.as_str());
    let (conn, joined) = join::join(
        &state,
        &access.room,
        &id,
        owner,
        |loaded| policy::authorize_as::<Manage>(user, &id, loaded),
        &user.subject,
    )
    .await?;
    let status = if joined.newly {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    // Join alone lets a client be present, not read the room.
    let reads = policy::room_view(user, access.room.as_str()) == RoomView::Full;
    let body = Membership {
        room: access.room.to_string(),
        connection_id: conn.id,
        joined_at: joined.joined_at,
        occupancy: reads.then_some(joined.occupancy),
        session_id: reads.then_some(joined.session_id),
    };
    Ok((status, Json(body)).into_response())
}

/// Leave a room: the connection's owner (reason `left`), or someone with
/// `moderate` on the room removing another's connection (reason `evicted`).
/// The last one out ends the session before this answers.
#[utoipa::path(
    delete, path = "/v1/rooms/{room}/connections/{id}", tag = "presence", operation_id = "presence.leave",
    params(
        ("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"),
        ("id" = String, Path, description = "Connection id", format = Uuid),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Left"),
        (status = 400, description = "Invalid room or connection id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Neither the owner nor a moderator of the room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such connection, or it is not in the room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis or Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn leave_room(
    user: AuthUser,
    RoomPath(room): RoomPath,
    ConnectionPath(id): ConnectionPath,
    State(state): State<AppState>,
) -> Result<StatusCode, Error> {
    let rights = policy::leave_rights(&user, &room);
    let caller = Remover::Caller {
        subject: rights.subject,
        moderates: rights.moderates,
    };
    if occupancy::leave(&state, room.as_str(), &id, caller, &user.subject).await? == Leave::Left {
        return Ok(StatusCode::NO_CONTENT);
    }
    // Refused or not in the room: decided from the connection itself, as
    // for any request on it (404 when the caller may not see it, else 403).
    let conn = policy::authorize(
        &user,
        &id,
        connections::load(&state, &id).await?,
        |conn| policy::owns(&user, conn) || rights.moderates,
        &format!("only the connection's owner, or moderate on room {room}, may remove it"),
    )?;
    let allowed = Remover::Allowed(policy::leave_reason(&user, &conn));
    match occupancy::leave(&state, room.as_str(), &conn.id, allowed, &user.subject).await? {
        Leave::Left => Ok(StatusCode::NO_CONTENT),
        Leave::NotInRoom | Leave::Refused => Err(Error::not_found(
            "not-in-room",
            format!("connection {id} is not in room {room}"),
        )),
    }
}

/// One occupant of a room.
#[derive(Debug, Serialize, ToSchema)]
pub struct OccupantOut {
    /// The connection id.
    pub id: String,
    pub owner: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub joined_at: DateTime<Utc>,
}

/// The room's occupants with their metadata, in connection-id order.
#[utoipa::path(
    get, path = "/v1/rooms/{room}/connections", tag = "presence", operation_id = "presence.list",
    params(("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"), PageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of occupants", body = Page<OccupantOut>),
        (status = 400, description = "Invalid room id, limit or cursor", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow read on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn list_occupants(
    access: RoomAccess<Read>,
    State(state): State<AppState>,
    Query(params): Query<PageParams>,
) -> Result<Json<Page<OccupantOut>>, Error> {
    let limit = page_limit(params.limit)?;
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let room = access.room.as_str();
    let mut items = Vec::with_capacity(limit + 1);
    let mut after = after;
    loop {
        let page = occupants::page(&state, room, after.as_deref(), limit + 1 - items.len()).await?;
        items.extend(page.occupants.into_iter().map(|o| OccupantOut {
            id: o.id,
            owner: o.owner,
            metadata: o.metadata,
            joined_at: o.joined_at,
        }));
        match page.next {
            Some(next) if items.len() <= limit => after = Some(next),
            _ => break,
        }
    }
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|o| encode_cursor(&o.id))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// Clear a room: every occupant is evicted (`presence.left`, reason
/// `evicted`) and the session ends; the metadata stays.
#[utoipa::path(
    post, path = "/v1/rooms/{room}/clear", tag = "presence", operation_id = "presence.clear",
    params(("room" = String, Path, description = "Room id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Cleared"),
        (status = 400, description = "Invalid room id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "The token does not allow moderate on this room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Redis or Postgres unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn clear_room(
    access: RoomAccess<Moderate>,
    State(state): State<AppState>,
) -> Result<StatusCode, Error> {
    let room = access.room.as_str();
    find_room(&state, &access.room).await?;
    teardown::clear(&state, room, &access.user.subject).await?;
    Ok(StatusCode::NO_CONTENT)
}
