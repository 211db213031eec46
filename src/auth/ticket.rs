//! What a stream ticket keeps of the token it was minted with: the verified
//! identity a stream needs, not the token itself (up to 8 KiB, and a
//! credential that would sit in Redis for as long as the ticket lives).

use serde::{Deserialize, Serialize};

use super::claims::{Action, MetacastClaim, Permissions, RoomPattern};
use super::extract::AuthUser;

/// The identity behind a ticket, stored as compact JSON.
///
/// Streams check only `read` on rooms (a room stream; which connections a
/// caller may see) and ownership (`sub`, or `admin`) for a connection's
/// stream, so a ticket keeps the token's `read` patterns and nothing else:
/// the caller it redeems to can read, never write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketIdentity {
    sub: String,
    /// The token's `exp`: a stream opened with the ticket still ends then.
    exp: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    admin: bool,
    /// Room patterns (`lobby`, `team-*`, `*`) the token allows `read` on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    read: Vec<String>,
}

impl TicketIdentity {
    /// What a ticket minted by `user` stands for.
    pub fn of(user: &AuthUser) -> Self {
        // An admin reads everything anyway.
        let read = if user.permissions.admin {
            Vec::new()
        } else {
            user.permissions
                .patterns_for(Action::Read)
                .map(|pattern| match pattern {
                    RoomPattern::Exact(id) => id.clone(),
                    RoomPattern::Prefix(prefix) => format!("{prefix}*"),
                })
                .collect()
        };
        Self {
            sub: user.subject.clone(),
            exp: user.expires_at,
            admin: user.permissions.admin,
            read,
        }
    }

    /// The subject the ticket was minted for.
    pub fn subject(&self) -> &str {
        &self.sub
    }

    /// The caller the ticket stands for, unless its token has expired by
    /// `now` (seconds since the epoch).
    pub fn into_user(self, now: u64) -> Result<AuthUser, String> {
        if self.exp <= now {
            return Err("the ticket's token has expired".to_owned());
        }
        let claim = MetacastClaim {
            admin: self.admin,
            rooms: self
                .read
                .into_iter()
                .map(|pattern| (pattern, vec![Action::Read.as_str().to_owned()]))
                .collect(),
            own_metadata: false,
        };
        Ok(AuthUser {
            subject: self.sub,
            permissions: Permissions::from_claim(&claim)?,
            expires_at: self.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RoomId;

    fn user(admin: bool, rooms: &[(&str, &[&str])]) -> AuthUser {
        let claim = MetacastClaim {
            admin,
            rooms: rooms
                .iter()
                .map(|(p, a)| (p.to_string(), a.iter().map(|s| s.to_string()).collect()))
                .collect(),
            own_metadata: true,
        };
        AuthUser {
            subject: "alice".to_owned(),
            permissions: Permissions::from_claim(&claim).unwrap(),
            expires_at: 2_000,
        }
    }

    fn round_trip(user: &AuthUser) -> (String, AuthUser) {
        let json = serde_json::to_string(&TicketIdentity::of(user)).unwrap();
        let identity: TicketIdentity = serde_json::from_str(&json).unwrap();
        (json, identity.into_user(1_000).unwrap())
    }

    #[test]
    fn a_ticket_keeps_read_and_nothing_else() {
        let (json, redeemed) = round_trip(&user(
            false,
            &[
                ("lobby", &["read", "join"]),
                ("team-*", &["read"]),
                ("x", &["write_room"]),
            ],
        ));
        assert_eq!(
            json,
            r#"{"sub":"alice","exp":2000,"read":["lobby","team-*"]}"#
        );
        let room = |id: &str| RoomId::parse(id).unwrap();
        assert!(redeemed.permissions.allows(&room("lobby"), Action::Read));
        assert!(redeemed.permissions.allows(&room("team-4"), Action::Read));
        assert!(!redeemed.permissions.allows(&room("lobby"), Action::Join));
        assert!(!redeemed.permissions.allows(&room("x"), Action::Read));
        assert!(!redeemed.permissions.own_metadata);
        assert_eq!(
            (redeemed.subject.as_str(), redeemed.expires_at),
            ("alice", 2_000)
        );
    }

    #[test]
    fn admins_and_stars_stay_what_they_were() {
        let (json, admin) = round_trip(&user(true, &[]));
        assert_eq!(json, r#"{"sub":"alice","exp":2000,"admin":true}"#);
        assert!(admin.permissions.admin);
        let (_, star) = round_trip(&user(false, &[("*", &["read"])]));
        assert!(!star.permissions.admin);
        assert!(
            star.permissions
                .allows(&RoomId::parse("any").unwrap(), Action::Read)
        );
    }

    #[test]
    fn an_expired_identity_is_refused() {
        let identity = TicketIdentity::of(&user(false, &[]));
        assert!(identity.into_user(2_000).is_err());
    }
}
