//! Identifiers, validated once at the edge.

use std::fmt;

use crate::error::Error;

/// Longest room id: one leading character plus 127 more.
pub const ROOM_ID_MAX_LEN: usize = 128;

/// A room name chosen by the caller, matching `^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomId(String);

impl RoomId {
    /// The rule, as shown to clients in error messages.
    pub const RULE: &'static str = "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$";

    /// Validates `raw` against [`RoomId::RULE`].
    pub fn parse(raw: &str) -> Result<Self, Error> {
        if is_valid_room_id(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Error::bad_request(
                "invalid-room-id",
                format!("room ids must match {}", Self::RULE),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `raw` may name a room.
pub fn is_valid_room_id(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= ROOM_ID_MAX_LEN
                && first.is_ascii_alphanumeric()
                && rest.iter().all(|&b| is_room_id_tail_byte(b))
        }
        None => false,
    }
}

/// Whether `b` may appear after the first character of a room id.
pub fn is_room_id_tail_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-')
}

/// Parses a server-issued id (connection or session): a UUID, returned in its
/// canonical lower-case hyphenated form.
pub fn parse_uuid(raw: &str, what: &'static str) -> Result<uuid::Uuid, Error> {
    uuid::Uuid::try_parse(raw).map_err(|_| {
        Error::bad_request(
            match what {
                "session" => "invalid-session-id",
                _ => "invalid-connection-id",
            },
            format!("{what} ids are UUIDs such as 01937b2e-8f4a-7cc3-9a6e-3c1b5d2f4e6a"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_the_rule_allows() {
        for id in [
            "lobby",
            "team:42",
            "a",
            "A.b_c:d@e-f",
            "0",
            &"x".repeat(128),
        ] {
            assert!(is_valid_room_id(id), "{id} should be valid");
        }
    }

    #[test]
    fn rejects_everything_else() {
        let too_long = "x".repeat(129);
        for id in [
            "", "-lobby", ".x", "_x", "lob by", "lobby/1", "café", "a*", "a%20", "a\0", &too_long,
        ] {
            assert!(!is_valid_room_id(id), "{id:?} should be invalid");
        }
    }

    #[test]
    fn uuids_are_validated() {
        assert!(parse_uuid("01937b2e-8f4a-7cc3-9a6e-3c1b5d2f4e6a", "connection").is_ok());
        assert!(parse_uuid("lobby", "connection").is_err());
        assert!(parse_uuid("", "session").is_err());
    }

    #[test]
    fn parse_names_the_rule() {
        let err = RoomId::parse("bad id").unwrap_err();
        assert!(err.to_string().contains(RoomId::RULE));
    }
}
