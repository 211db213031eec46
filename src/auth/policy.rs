//! Every permission decision, in one place. Handlers, streams and listings
//! ask here before they touch data; nothing else compares grants.
//!
//! The rules (docs/architecture.md, "Permissions"):
//! - a room's content — metadata, session, occupants, its events — reaches
//!   a caller by any path only with `read` on the room; `join` lets a
//!   client be present, not read: a join-only member learns only its own
//!   membership;
//! - a connection is seen by its owner, an admin, or a reader of a room it
//!   is in — who is shown only the rooms they may read;
//! - a connection is managed (heartbeat, disconnect, joined to rooms, its
//!   stream opened) by its owner or an admin;
//! - its metadata is written by its owner with `own_metadata`, an admin, or
//!   a moderator of a room it is in;
//! - it is removed from a room by its owner or a moderator of the room.

use super::claims::Action;
use super::extract::AuthUser;
use super::ranges::RoomRanges;
use crate::error::Error;
use crate::ids::RoomId;
use crate::presence::Connection;

/// Whether `user` may do `action` in `room`.
pub fn may(user: &AuthUser, room: &RoomId, action: Action) -> bool {
    user.permissions.allows(room, action)
}

/// [`may`] for a room id as stored (not validated again); an id that is
/// not a room id allows nothing.
pub fn may_in(user: &AuthUser, room: &str, action: Action) -> bool {
    RoomId::parse(room).is_ok_and(|room| may(user, &room, action))
}

/// 403 unless `user` may do `action` in `room`; decided from the token
/// alone, so it never reveals whether the room exists.
pub fn require(user: &AuthUser, room: &RoomId, action: Action) -> Result<(), Error> {
    if may(user, room, action) {
        Ok(())
    } else {
        Err(Error::forbidden(format!(
            "the token does not allow {} on room {room}",
            action.as_str()
        )))
    }
}

/// The rooms `user` may read, for listings to narrow to before any query.
pub fn readable_rooms(user: &AuthUser) -> RoomRanges {
    RoomRanges::allowed(&user.permissions, Action::Read)
}

/// How much of a room a caller is shown where it is a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomView {
    /// Everything: metadata, session, occupants, every event.
    Full,
    /// Only the caller's own membership: that it joined and left (with no
    /// occupancy or session), nothing of the room or others.
    Membership,
}

pub fn room_view(user: &AuthUser, room: &str) -> RoomView {
    if may_in(user, room, Action::Read) {
        RoomView::Full
    } else {
        RoomView::Membership
    }
}

/// What a caller may do with a connection.
pub trait ConnectionRule {
    /// Whether `user` may act on `conn`; only asked of callers who can see it.
    fn allows(user: &AuthUser, conn: &Connection) -> bool;
    const DENIED: &'static str;
}

/// See it: the owner, an admin, or `read` on a room it is in.
pub struct View;
/// Heartbeat, disconnect, join it to rooms, open its stream: the owner or
/// an admin.
pub struct Manage;
/// Write its metadata: the owner with `own_metadata`, an admin, or
/// `moderate` on a room it is in.
pub struct WriteMetadata;

/// Whether `user` owns `conn` (an admin counts as every connection's owner).
pub fn owns(user: &AuthUser, conn: &Connection) -> bool {
    user.permissions.admin || user.subject == conn.owner
}

fn in_room_with(user: &AuthUser, conn: &Connection, action: Action) -> bool {
    conn.rooms.keys().any(|room| may_in(user, room, action))
}

impl ConnectionRule for View {
    fn allows(user: &AuthUser, conn: &Connection) -> bool {
        owns(user, conn) || in_room_with(user, conn, Action::Read)
    }
    const DENIED: &'static str = "not visible";
}

impl ConnectionRule for Manage {
    fn allows(user: &AuthUser, conn: &Connection) -> bool {
        owns(user, conn)
    }
    const DENIED: &'static str = "only the connection's owner may do this";
}

impl ConnectionRule for WriteMetadata {
    fn allows(user: &AuthUser, conn: &Connection) -> bool {
        user.permissions.admin
            || (user.subject == conn.owner && user.permissions.own_metadata)
            || in_room_with(user, conn, Action::Moderate)
    }
    const DENIED: &'static str = "writing this connection's metadata needs own_metadata (owner) or moderate in one of its rooms";
}

/// Decides a request on connection `id` (`loaded`, if it exists) that
/// `allowed` permits: a connection the caller can neither see nor act on is
/// a 404, so its existence stays hidden (SPEC §6); one it sees but may not
/// act on is a 403 with `denied`.
pub fn authorize(
    user: &AuthUser,
    id: &str,
    loaded: Option<Connection>,
    allowed: impl Fn(&Connection) -> bool,
    denied: &str,
) -> Result<Connection, Error> {
    let connection = loaded
        .filter(|conn| View::allows(user, conn) || allowed(conn))
        .ok_or_else(|| crate::presence::connections::not_found(id))?;
    if allowed(&connection) {
        Ok(connection)
    } else {
        Err(Error::forbidden(denied))
    }
}

/// [`authorize`] under rule `R`.
pub fn authorize_as<R: ConnectionRule>(
    user: &AuthUser,
    id: &str,
    loaded: Option<Connection>,
) -> Result<Connection, Error> {
    authorize(user, id, loaded, |conn| R::allows(user, conn), R::DENIED)
}

/// The rooms of `conn` that `user` is shown: all of them to its owner (it
/// joined them), else those the caller may read.
pub fn visible_rooms(user: &AuthUser, conn: &Connection) -> Vec<String> {
    conn.rooms
        .keys()
        .filter(|room| owns(user, conn) || may_in(user, room, Action::Read))
        .cloned()
        .collect()
}

/// Who may be removed from `room` by `user`, for the LEAVE script to judge
/// against the connection's owner atomically: its own connections (reason
/// `left`), and anyone's with `moderate` (an admin's too: reason `evicted`).
pub fn leave_rights<'a>(user: &'a AuthUser, room: &RoomId) -> LeaveRights<'a> {
    LeaveRights {
        subject: user.subject.as_str(),
        moderates: may(user, room, Action::Moderate),
    }
}

/// See [`leave_rights`].
#[derive(Debug, Clone, Copy)]
pub struct LeaveRights<'a> {
    /// Connections of this owner leave; others are evicted.
    pub subject: &'a str,
    pub moderates: bool,
}

/// Why a connection left a room that `user` took it out of.
pub fn leave_reason(user: &AuthUser, conn: &Connection) -> &'static str {
    if user.subject == conn.owner {
        "left"
    } else {
        "evicted"
    }
}

/// Which connections `user` may list: every one (admin) or its own.
pub fn lists_all_connections(user: &AuthUser) -> bool {
    user.permissions.admin
}
