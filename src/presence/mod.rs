//! Presence: connections with leases, room occupancy, and the session
//! lifecycle they drive — the one place every lifecycle transition is made.
//! Redis decides each transition atomically (one Lua script per room or per
//! connection); Postgres records the durable ones.
//!
//! Where each transition is:
//! - join: [`join::join`]; leave: [`occupancy::leave`];
//! - clear and delete: [`teardown`];
//! - disconnect and lease expiry: [`connections::end`] (the sweeper calls it
//!   for expired leases);
//! - every Postgres session transition (start, end, end what Redis no
//!   longer names, end all on delete): [`sessions`], each naming the
//!   session it is about and deciding under the room's row lock;
//! - repairs after a crash: [`sweeper::reconcile`].

pub mod connections;
pub mod join;
pub mod occupancy;
pub mod occupants;
pub mod sessions;
pub mod sweeper;
pub mod teardown;

pub use connections::Connection;
