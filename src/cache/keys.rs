//! Redis key names. Every key starts with the configured prefix; all keys of
//! one room share the hash tag `{room:<id>}` and all keys of one connection
//! `{conn:<id>}`, so each multi-key script touches a single Redis Cluster slot.

/// Builds key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Hash: a connection's owner, metadata, version, lease and state.
    pub fn connection(&self, id: &str) -> String {
        format!("{}{{conn:{id}}}", self.prefix)
    }

    /// Hash: the rooms a connection is in → joined_at (ms).
    pub fn connection_rooms(&self, id: &str) -> String {
        format!("{}{{conn:{id}}}:rooms", self.prefix)
    }

    /// Stream: a connection's own events (its metadata changes, and markers
    /// of the rooms it joins and leaves).
    pub fn connection_events(&self, id: &str) -> String {
        format!("{}{{conn:{id}}}:events", self.prefix)
    }

    /// Counter: the connection's open event streams (several tabs may share one).
    pub fn connection_streams(&self, id: &str) -> String {
        format!("{}{{conn:{id}}}:streams", self.prefix)
    }

    /// The fan-out topic of a connection's own events. Room ids never start
    /// with `/`, so topics of rooms and connections cannot collide.
    pub fn connection_topic(id: &str) -> String {
        format!("/conn/{id}")
    }

    /// The stream behind a fan-out topic: a room id, or a connection topic.
    pub fn topic_events(&self, topic: &str) -> String {
        match topic.strip_prefix("/conn/") {
            Some(id) => self.connection_events(id),
            None => self.room_events(topic),
        }
    }

    /// Sorted set: every live connection id → its lease deadline (ms).
    pub fn deadlines(&self) -> String {
        format!("{}connections:deadlines", self.prefix)
    }

    /// Sorted set (all scores 0, ordered by id): every connection, for listing.
    pub fn all_connections(&self) -> String {
        format!("{}connections:index", self.prefix)
    }

    /// Sorted set (all scores 0): one subject's connections, for quotas and listing.
    /// The subject is hex-encoded: it is the caller's and may hold anything.
    pub fn subject_connections(&self, subject: &str) -> String {
        let hex: String = subject.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}subject:{hex}:connections", self.prefix)
    }

    /// Hash: a room's occupants → joined_at (ms).
    pub fn room_members(&self, room: &str) -> String {
        format!("{}{{room:{room}}}:members", self.prefix)
    }

    /// Sorted set (all scores 0): the room's occupants by id, so listings
    /// page through them in O(page); kept with `members` by JOIN and LEAVE.
    pub fn room_occupants(&self, room: &str) -> String {
        format!("{}{{room:{room}}}:occupants", self.prefix)
    }

    /// Hash: each occupant's profile, what the room's events last said about
    /// it: `o:<id>` its owner and `m:<id>` its metadata (JSON), `v:<id>` the
    /// metadata's version, `s:<id>` the stamp of the attach that joined it,
    /// `j:<id>` the nonce of the join that made its membership.
    pub fn room_profiles(&self, room: &str) -> String {
        format!("{}{{room:{room}}}:profiles", self.prefix)
    }

    /// Sorted set: connections that ended while (maybe) on their way into
    /// the room → when (ms); a join still in flight for one of them must not
    /// add it. Pruned by age, and the key expires.
    pub fn room_departed(&self, room: &str) -> String {
        format!("{}{{room:{room}}}:departed", self.prefix)
    }

    /// Hash: the room's active session: `id`, `started_at`, `peak`.
    pub fn room_session(&self, room: &str) -> String {
        format!("{}{{room:{room}}}:session", self.prefix)
    }

    /// List: the `presence.joined` events of joins into a session whose
    /// `session.started` is not in the room's stream yet, in join order;
    /// appended right after it (see `APPEND_DURABLE`). Deleted with the
    /// session.
    pub fn room_pending_joins(&self, room: &str) -> String {
        format!("{}{{room:{room}}}:pending", self.prefix)
    }

    /// String, expiring: the room is being deleted; joins are refused
    /// until the delete has evicted everyone and recorded the end.
    pub fn room_closing(&self, room: &str) -> String {
        format!("{}{{room:{room}}}:closing", self.prefix)
    }

    /// Stream: the room's recent events.
    pub fn room_events(&self, room: &str) -> String {
        format!("{}{{room:{room}}}:events", self.prefix)
    }

    /// Pub/sub channel: room ids whose event stream grew (a wake-up only).
    pub fn events_channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// String: this Redis dataset's epoch, part of every event id. Redis here
    /// keeps nothing on disk: a restart loses it, and a new epoch tells
    /// clients their old ids cannot be resumed.
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// String: a stream ticket → the identity it stands for (compact JSON).
    pub fn ticket(&self, ticket: &str) -> String {
        format!("{}ticket:{ticket}", self.prefix)
    }

    /// Sorted set: one subject's unexpired tickets → when each expires (ms),
    /// for the per-subject cap. The subject is hex-encoded, as in
    /// [`Keys::subject_connections`], so it cannot inject a hash tag.
    pub fn subject_tickets(&self, subject: &str) -> String {
        let hex: String = subject.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}{{tickets:{hex}}}", self.prefix)
    }

    /// String: the sequence number of the room's last durable event in its stream.
    pub fn room_published_seq(&self, room: &str) -> String {
        format!("{}{{room:{room}}}:published_seq", self.prefix)
    }

    /// Sorted set: rooms with an active session → started_at (ms), for the reconciler.
    pub fn active_sessions(&self) -> String {
        format!("{}sessions:active", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_room_share_a_hash_tag() {
        let keys = Keys::new("mc:");
        assert_eq!(keys.room_members("lobby"), "mc:{room:lobby}:members");
        assert_eq!(keys.room_session("lobby"), "mc:{room:lobby}:session");
        assert_eq!(keys.room_profiles("lobby"), "mc:{room:lobby}:profiles");
        assert_eq!(keys.room_departed("lobby"), "mc:{room:lobby}:departed");
        assert_eq!(keys.connection("c1"), "mc:{conn:c1}");
        assert_eq!(keys.connection_rooms("c1"), "mc:{conn:c1}:rooms");
    }

    #[test]
    fn subjects_cannot_inject_hash_tags() {
        let key = Keys::new("mc:").subject_connections("a}{b");
        assert!(!key.contains('{') && !key.contains('}'), "{key}");
        let key = Keys::new("mc:").subject_tickets("a}{b");
        assert_eq!(key, "mc:{tickets:617d7b62}");
    }
}
