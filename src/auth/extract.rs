//! Authentication and permission checks as extractors: a handler that takes
//! `RoomAccess<WriteRoom>` cannot run unless the token allows `write_room`
//! on the room in its path.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, RawPathParams};
use axum::http::header;
use axum::http::request::Parts;

use super::claims::{Action, Permissions};
use super::keys::JwtKeys;
use crate::error::Error;
use crate::ids::RoomId;

/// A caller whose bearer token verified.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The token's `sub`.
    pub subject: String,
    pub permissions: Permissions,
    /// The token's `exp`, in seconds since the epoch.
    pub expires_at: u64,
}

impl<S> FromRequestParts<S> for AuthUser
where
    Arc<JwtKeys>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        Self::from_token(&Arc::<JwtKeys>::from_ref(state), token)
    }
}

impl AuthUser {
    /// Verifies a token however it arrived (header, stream ticket, cookie).
    pub fn from_token(keys: &JwtKeys, token: &str) -> Result<Self, Error> {
        let verified = keys.verify(token).map_err(Error::Unauthorized)?;
        tracing::Span::current().record("user_id", verified.subject.as_str());
        Ok(Self {
            subject: verified.subject,
            permissions: verified.permissions,
            expires_at: verified.expires_at,
        })
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, Error> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Error::Unauthorized("an Authorization: Bearer token is required".into()))?;
    let value = value
        .to_str()
        .map_err(|_| Error::Unauthorized("the Authorization header is not ASCII".into()))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Error::Unauthorized(
            "the Authorization header must be `Bearer <token>`".into(),
        )),
    }
}

/// A permission level a handler demands on the room in its path.
pub trait RoomAction {
    const ACTION: Action;
}

/// `read`: documents, occupants, history, streams.
pub struct Read;
/// `join`: joining a connection to the room.
pub struct Join;
/// `write_session`: the active session's metadata.
pub struct WriteSession;
/// `moderate`: clearing the room, removing others.
pub struct Moderate;
/// `write_room`: room metadata.
pub struct WriteRoom;
/// `delete`: deleting the room.
pub struct Delete;

impl RoomAction for Read {
    const ACTION: Action = Action::Read;
}
impl RoomAction for Join {
    const ACTION: Action = Action::Join;
}
impl RoomAction for WriteSession {
    const ACTION: Action = Action::WriteSession;
}
impl RoomAction for Moderate {
    const ACTION: Action = Action::Moderate;
}
impl RoomAction for WriteRoom {
    const ACTION: Action = Action::WriteRoom;
}
impl RoomAction for Delete {
    const ACTION: Action = Action::Delete;
}

/// Proof that the caller may perform `A` on `room`, decided from the token
/// alone before any lookup, so a 403 never reveals whether the room exists.
pub struct RoomAccess<A> {
    pub user: AuthUser,
    pub room: RoomId,
    action: PhantomData<A>,
}

impl<S, A> FromRequestParts<S> for RoomAccess<A>
where
    Arc<JwtKeys>: FromRef<S>,
    S: Send + Sync,
    A: RoomAction,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        let RoomPath(room) = RoomPath::from_request_parts(parts, state).await?;
        super::policy::require(&user, &room, A::ACTION)?;
        Ok(Self {
            user,
            room,
            action: PhantomData,
        })
    }
}

/// The validated `{room}` of the path, for handlers whose permission rule is
/// more than one room action (e.g. "the owner, or `moderate`").
pub struct RoomPath(pub RoomId);

impl<S: Send + Sync> FromRequestParts<S> for RoomPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::bad_request("invalid-room-id", "the room id is not valid UTF-8"))?;
        let raw = params
            .iter()
            .find_map(|(name, value)| (name == "room").then_some(value))
            .ok_or_else(|| anyhow::anyhow!("RoomPath used on a route without {{room}}"))?;
        let room = RoomId::parse(raw)?;
        tracing::Span::current().record("room_id", room.as_str());
        Ok(Self(room))
    }
}
