//! Authentication (JWT verification) and authorization (room permissions).

mod claims;
mod extract;
mod keys;

pub use claims::{Action, Claims, MetacastClaim, Permissions, RoomAccessFilter, RoomPattern};
pub use extract::{
    AuthUser, Delete, Join, Moderate, Read, RoomAccess, RoomAction, RoomPath, WriteRoom,
    WriteSession,
};
pub use keys::{JwtKeys, JwtSettings, TokenRequest};
