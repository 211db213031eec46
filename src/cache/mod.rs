//! Redis: ephemeral state (presence, leases, event history) and the events'
//! wake-up channel, on one server or a Redis Cluster.

mod connection;
pub mod keys;
pub mod scripts;

pub use connection::{Redis, connect, subscription_clients};
pub use keys::Keys;
