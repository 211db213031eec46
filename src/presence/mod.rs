//! Presence: connections with leases, room occupancy, and the session
//! lifecycle they drive. Redis decides every transition atomically (one Lua
//! script per room or per connection); Postgres records the durable ones.

pub mod connections;
pub mod join;
pub mod occupancy;
pub mod occupants;
pub mod sessions;
pub mod sweeper;
pub mod teardown;

pub use connections::Connection;
