//! The types of change events (SPEC §5), as the SSE `event` field names them.

/// What happened, for an event metacast produces. Events read back from Redis
/// carry their type as the text written here (or one only a script writes:
/// `gap`, `membership.*`), read with [`EventKind::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    RoomMetadataUpdated,
    RoomMetadataDeleted,
    RoomCleared,
    RoomDeleted,
    SessionStarted,
    SessionEnded,
    SessionMetadataUpdated,
    PresenceJoined,
    PresenceLeft,
    ConnectionMetadataUpdated,
}

impl EventKind {
    pub const ALL: [Self; 10] = [
        Self::RoomMetadataUpdated,
        Self::RoomMetadataDeleted,
        Self::RoomCleared,
        Self::RoomDeleted,
        Self::SessionStarted,
        Self::SessionEnded,
        Self::SessionMetadataUpdated,
        Self::PresenceJoined,
        Self::PresenceLeft,
        Self::ConnectionMetadataUpdated,
    ];

    /// The kind an event read back from Redis names, if it is one of these.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RoomMetadataUpdated => "room.metadata.updated",
            Self::RoomMetadataDeleted => "room.metadata.deleted",
            Self::RoomCleared => "room.cleared",
            Self::RoomDeleted => "room.deleted",
            Self::SessionStarted => "session.started",
            Self::SessionEnded => "session.ended",
            Self::SessionMetadataUpdated => "session.metadata.updated",
            Self::PresenceJoined => "presence.joined",
            Self::PresenceLeft => "presence.left",
            Self::ConnectionMetadataUpdated => "connection.metadata.updated",
        }
    }

    /// Whether a durable event of this type leaves its `metadata` out of
    /// its outbox row, the room's row holding it ([`super::replay`]).
    pub const fn leaves_document_to_room(self) -> bool {
        matches!(self, Self::RoomMetadataUpdated)
    }

    /// Whether a durable event of this type replaces the room's document
    /// some other way than a metadata write, whose writer stores the new
    /// document in its cache itself.
    pub const fn replaces_document_otherwise(self) -> bool {
        matches!(self, Self::RoomCleared | Self::RoomDeleted)
    }
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn every_kind_parses_back_from_its_text() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("gap"), None);
        assert_eq!(EventKind::parse("membership.joined"), None);
    }

    #[test]
    fn only_clears_and_deletions_replace_the_document_otherwise() {
        use EventKind::*;
        let replacing: Vec<_> = EventKind::ALL
            .into_iter()
            .filter(|kind| kind.replaces_document_otherwise())
            .collect();
        assert_eq!(replacing, [RoomCleared, RoomDeleted]);
    }
}
