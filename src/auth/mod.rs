//! Authentication (JWT verification) and authorization (room permissions).

mod claims;
mod extract;
mod keys;
pub mod policy;
mod ranges;
mod ticket;
mod verified;

pub use claims::{Action, Claims, MetacastClaim, Permissions, RoomPattern};
pub use extract::{
    AuthUser, Delete, Join, Moderate, Read, RoomAccess, RoomAction, RoomPath, WriteRoom,
    WriteSession,
};
pub use keys::{JwtKeys, JwtSettings, TokenRequest};
pub use ranges::{IdRange, RoomRanges};
pub use ticket::TicketIdentity;
