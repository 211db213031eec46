//! The `metacast` claim: room patterns, actions and what they allow.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{RoomId, is_room_id_tail_byte, is_valid_room_id};

/// What a token may do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read documents, occupants, history and event streams.
    Read,
    /// Join a connection to the room.
    Join,
    /// Write the active session's metadata.
    WriteSession,
    /// Write room metadata (and so create the room).
    WriteRoom,
    /// Clear the room, remove others, write others' connection metadata.
    Moderate,
    /// Delete the room.
    Delete,
}

impl Action {
    /// The name used in tokens and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Join => "join",
            Self::WriteSession => "write_session",
            Self::WriteRoom => "write_room",
            Self::Moderate => "moderate",
            Self::Delete => "delete",
        }
    }

    /// Parses the name used in tokens.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Read,
            Self::Join,
            Self::WriteSession,
            Self::WriteRoom,
            Self::Moderate,
            Self::Delete,
        ]
        .into_iter()
        .find(|action| action.as_str() == name)
    }
}

/// A room pattern from a token: an exact room id, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RoomPattern {
    Exact(String),
    /// Matches every room id starting with this prefix (possibly empty: `*`).
    Prefix(String),
}

impl RoomPattern {
    /// Parses a pattern. `*` may only end it, and the part before must be a
    /// possible start of a room id, so no pattern reaches beyond its prefix.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.strip_suffix('*') {
            Some(prefix) => {
                let valid = match prefix.as_bytes().split_first() {
                    None => true,
                    Some((first, rest)) => {
                        first.is_ascii_alphanumeric()
                            && rest.iter().all(|&b| is_room_id_tail_byte(b))
                            && prefix.len() < 128
                    }
                };
                valid.then(|| Self::Prefix(prefix.to_owned()))
            }
            None => is_valid_room_id(raw).then(|| Self::Exact(raw.to_owned())),
        }
    }

    /// Whether the pattern covers `room`.
    pub fn matches(&self, room: &RoomId) -> bool {
        match self {
            Self::Exact(name) => name == room.as_str(),
            Self::Prefix(prefix) => room.as_str().starts_with(prefix.as_str()),
        }
    }
}

/// The claims metacast reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    // Defaults only let the verifier's own required-claim check run (and
    // name the missing claim); a token without `sub` or `exp` is refused.
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// A string or an array of strings; checked by the verifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    #[serde(default)]
    pub metacast: MetacastClaim,
}

/// The application's own claim, as it appears in the token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetacastClaim {
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub rooms: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub own_metadata: bool,
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub admin: bool,
    pub own_metadata: bool,
    rooms: Vec<(RoomPattern, Vec<Action>)>,
}

impl Permissions {
    /// Validates the claim: every pattern and action must be well formed, so
    /// a token of the wrong shape is rejected rather than half-understood.
    pub fn from_claim(claim: &MetacastClaim) -> Result<Self, String> {
        let mut rooms = Vec::with_capacity(claim.rooms.len());
        for (pattern, actions) in &claim.rooms {
            let pattern = RoomPattern::parse(pattern)
                .ok_or_else(|| format!("room pattern {pattern:?} is not a room id or prefix*"))?;
            let actions = actions
                .iter()
                .map(|name| Action::parse(name).ok_or_else(|| format!("unknown action {name:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            rooms.push((pattern, actions));
        }
        Ok(Self {
            admin: claim.admin,
            own_metadata: claim.own_metadata,
            rooms,
        })
    }

    /// Whether the token allows `action` in `room`.
    pub fn allows(&self, room: &RoomId, action: Action) -> bool {
        self.admin
            || self
                .rooms
                .iter()
                .any(|(pattern, actions)| actions.contains(&action) && pattern.matches(room))
    }

    /// The patterns under which the token allows `action` (admin aside).
    pub fn patterns_for(&self, action: Action) -> impl Iterator<Item = &RoomPattern> {
        self.rooms
            .iter()
            .filter(move |(_, actions)| actions.contains(&action))
            .map(|(pattern, _)| pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(id: &str) -> RoomId {
        RoomId::parse(id).unwrap()
    }

    fn permissions(rooms: &[(&str, &[&str])]) -> Permissions {
        let claim = MetacastClaim {
            rooms: rooms
                .iter()
                .map(|(p, a)| (p.to_string(), a.iter().map(|s| s.to_string()).collect()))
                .collect(),
            ..MetacastClaim::default()
        };
        Permissions::from_claim(&claim).unwrap()
    }

    #[test]
    fn exact_patterns_match_only_their_room() {
        let p = RoomPattern::parse("lobby").unwrap();
        assert!(p.matches(&room("lobby")));
        assert!(!p.matches(&room("lobby2")));
        assert!(!p.matches(&room("lobb")));
    }

    #[test]
    fn prefix_patterns_stay_within_their_prefix() {
        let p = RoomPattern::parse("team-*").unwrap();
        assert!(p.matches(&room("team-1")));
        assert!(p.matches(&room("team-")));
        assert!(!p.matches(&room("team")));
        assert!(!p.matches(&room("teams-1")));
        assert!(!p.matches(&room("xteam-1")));
    }

    #[test]
    fn star_alone_matches_everything() {
        assert!(RoomPattern::parse("*").unwrap().matches(&room("anything")));
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        for raw in ["", "a*b", "**", "*a", "lob by", "-x*", "a/b*", "a%*"] {
            assert_eq!(RoomPattern::parse(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn escape_attempts_are_not_patterns() {
        for raw in [
            "..*",
            ".*",
            "lobby/../*",
            "lobby%2F*",
            "lobby%2f..*",
            "^lobby$",
            "lobby|admin",
            "[a-z]*",
            "lobby\\*",
            "lobby\0*",
            "lobby\n",
            // Cyrillic у and a fullwidth ｌ: look-alikes of lobby.
            "lobb\u{443}",
            "\u{ff4c}obby*",
            "lobby\u{200b}",
            " lobby",
            "lobby ",
        ] {
            assert_eq!(RoomPattern::parse(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn metacharacters_in_patterns_are_literal() {
        // `.` and `:` are room id characters, not regex or glob syntax.
        let p = RoomPattern::parse("lobby.*").unwrap();
        assert!(p.matches(&room("lobby.1")));
        for other in ["lobby", "lobbyx", "lobby2", "lobby-1"] {
            assert!(!p.matches(&room(other)), "{other}");
        }
        let p = RoomPattern::parse("team:4").unwrap();
        assert!(p.matches(&room("team:4")));
        assert!(!p.matches(&room("team:42")));
        // Room ids are case-sensitive.
        assert!(!RoomPattern::parse("Lobby").unwrap().matches(&room("lobby")));
        assert!(!RoomPattern::parse("LOB*").unwrap().matches(&room("lobby")));
    }

    #[test]
    fn actions_are_per_pattern() {
        let p = permissions(&[("lobby", &["read", "join"]), ("team-*", &["read"])]);
        assert!(p.allows(&room("lobby"), Action::Join));
        assert!(p.allows(&room("team-9"), Action::Read));
        assert!(!p.allows(&room("team-9"), Action::Join));
        assert!(!p.allows(&room("other"), Action::Read));
    }

    #[test]
    fn admin_allows_everything() {
        let p = Permissions {
            admin: true,
            own_metadata: false,
            rooms: Vec::new(),
        };
        assert!(p.allows(&room("x"), Action::Delete));
    }

    #[test]
    fn unknown_actions_invalidate_the_claim() {
        let claim = MetacastClaim {
            rooms: [("lobby".to_owned(), vec!["fly".to_owned()])].into(),
            ..MetacastClaim::default()
        };
        assert!(Permissions::from_claim(&claim).is_err());
    }
}
