//! JSON documents shared by every metadata scope (rooms today; sessions and
//! connections reuse it): parsing request bodies, write strategies, limits and
//! version preconditions.

mod body;
pub mod cache;
mod conditional;
mod limits;
mod strategy;

pub use body::parse_json;
pub use cache::DocumentCache;
pub use conditional::{Preconditions, etag};
pub use limits::DocumentLimits;
pub use strategy::{Strategy, Write, json_body};
