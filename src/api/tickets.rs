//! Single-use stream tickets, for browsers whose `EventSource` cannot send
//! an `Authorization` header: minted with a token, spent by opening one
//! stream with `?ticket=`.
//!
//! A ticket is a Redis string (its identity, see [`TicketIdentity`]) plus
//! an entry in its subject's sorted set, which caps how many one subject
//! holds. On a Redis Cluster the two live in different slots, so each step
//! is its own command: the cap is one script on the subject's set, then the
//! ticket is written. A mint cut off in between (or a redeem before it
//! removes the entry) leaves an entry that only holds a place until its
//! expiry, when the next mint prunes it.

use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AuthUser, TicketIdentity};
use crate::cache::scripts;
use crate::error::{Error, ProblemDetails};
use crate::state::AppState;

/// The longest a stream ticket is valid (less when its token expires sooner).
const TICKET_TTL: Duration = Duration::from_secs(60);
/// Random bytes in a ticket.
const TICKET_BYTES: usize = 32;
/// Characters of a ticket: its bytes in unpadded base64url.
const TICKET_CHARS: usize = 43;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_ticket))
}

/// A single-use stream ticket.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"ticket": "b3Jk…", "expires_at": "2026-11-22T19:01:00Z"}))]
pub struct TicketOut {
    /// Pass as `?ticket=` to open one stream.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

/// Create a single-use ticket that opens one event stream via `?ticket=`,
/// for browsers whose `EventSource` cannot send headers; tokens never go in
/// URLs. It is valid 60 s, or until the token expires if that is sooner,
/// and allows what the token allows to streams (`read` on rooms, and the
/// caller's own connections). A subject holds at most
/// `METACAST_MAX_TICKETS_PER_SUBJECT` (32) unexpired tickets; an opened
/// stream frees its ticket's place.
#[utoipa::path(
    post, path = "/v1/stream-tickets", tag = "events", operation_id = "events.ticket",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "A ticket", body = TicketOut),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 429, description = "The subject holds too many unexpired tickets (`too-many-tickets`)",
         body = ProblemDetails, content_type = "application/problem+json",
         headers(("Retry-After" = String, description = "Seconds until the subject's oldest ticket expires"))),
        (status = 503, description = "Redis unreachable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn create_ticket(
    user: AuthUser,
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<TicketOut>), Error> {
    // A ticket must not outlive the token it stands for.
    let token_left_ms = (user.expires_at as i64 * 1000) - Utc::now().timestamp_millis();
    if token_left_ms <= 0 {
        return Err(Error::Unauthorized("the token has expired".into()));
    }
    let ttl_ms = token_left_ms.min(TICKET_TTL.as_millis() as i64);
    let ticket = new_ticket();
    let identity =
        serde_json::to_string(&TicketIdentity::of(&user)).context("encoding a ticket")?;
    let cap = state.settings.max_tickets_per_subject;
    let mut redis = state.redis.clone();
    let (reserved, when_ms): (i64, i64) = scripts::RESERVE_TICKET
        .key(state.redis_keys.subject_tickets(&user.subject))
        .arg(&ticket)
        .arg(ttl_ms)
        .arg(cap)
        .invoke_async(&mut redis)
        .await?;
    if reserved == 0 {
        return Err(Error::busy(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-tickets",
            format!(
                "a subject may hold at most {cap} unexpired stream tickets; open a stream with one, or wait"
            ),
            // Whole seconds, rounded up: retrying sooner would still fail.
            (when_ms.max(1) as u64).div_ceil(1000),
        ));
    }
    redis::cmd("SET")
        .arg(state.redis_keys.ticket(&ticket))
        .arg(identity)
        .arg("PX")
        .arg(ttl_ms)
        .query_async::<()>(&mut redis)
        .await?;
    // The expiry on Redis' clock, which is the one that ends the ticket.
    let expires_at = DateTime::from_timestamp_millis(when_ms)
        .context("Redis returned an impossible ticket expiry")?;
    Ok((StatusCode::CREATED, Json(TicketOut { ticket, expires_at })))
}

fn new_ticket() -> String {
    // Two v4 UUIDs: 244 random bits from the OS generator.
    let mut random = [0u8; TICKET_BYTES];
    random[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    random[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    URL_SAFE_NO_PAD.encode(random)
}

/// Whether `ticket` has the shape [`new_ticket`] gives, so that anything
/// else (a guess, a 8 KiB string) is refused without a Redis round trip.
fn is_ticket_shape(ticket: &str) -> bool {
    ticket.len() == TICKET_CHARS
        && URL_SAFE_NO_PAD
            .decode(ticket)
            .is_ok_and(|bytes| bytes.len() == TICKET_BYTES)
}

/// Spends a ticket: the caller it stands for, once.
pub async fn redeem(state: &AppState, ticket: &str) -> Result<AuthUser, Error> {
    if !is_ticket_shape(ticket) {
        return Err(Error::Unauthorized("the ticket is malformed".into()));
    }
    let spent = || Error::Unauthorized("the ticket is spent or expired".into());
    let mut redis = state.redis.clone();
    let stored: Option<String> = redis::cmd("GETDEL")
        .arg(state.redis_keys.ticket(ticket))
        .query_async(&mut redis)
        .await?;
    let identity: TicketIdentity =
        serde_json::from_str(&stored.ok_or_else(spent)?).map_err(|err| {
            // Not one we wrote (a ticket of an older release): unusable.
            tracing::warn!(error = %err, "a stored ticket cannot be decoded");
            spent()
        })?;
    // Gives the ticket's place back. It is already spent: a failure here
    // must not refuse the stream, and the entry expires by itself.
    let released: redis::RedisResult<()> = redis::cmd("ZREM")
        .arg(state.redis_keys.subject_tickets(identity.subject()))
        .arg(ticket)
        .query_async(&mut redis)
        .await;
    if let Err(err) = released {
        tracing::warn!(error = %err, "a spent ticket keeps its place until it expires");
    }
    let user = identity
        .into_user(Utc::now().timestamp() as u64)
        .map_err(Error::Unauthorized)?;
    tracing::Span::current().record("user_id", user.subject.as_str());
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_minted_shapes_pass() {
        let minted = new_ticket();
        assert_eq!(minted.len(), TICKET_CHARS);
        assert!(is_ticket_shape(&minted));
        for bad in [
            "",
            "forged",
            &minted[1..],
            &format!("{minted}A"),
            &format!("{}+", &minted[1..]),
            &format!("{}=", &minted[1..]),
        ] {
            assert!(!is_ticket_shape(bad), "{bad:?}");
        }
    }
}
