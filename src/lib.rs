//! metacast: room, session and connection metadata for realtime apps.
//!
//! [`app::build_state`] wires the dependencies, [`api::router`] is the whole
//! HTTP application, and [`app::serve`] runs it until shutdown.

pub mod api;
pub mod app;
pub mod auth;
pub mod bounds;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod document;
pub mod error;
pub mod events;
pub mod extract;
pub mod http;
pub mod ids;
pub mod lifecycle;
pub mod metrics;
pub mod presence;
pub mod state;
pub mod telemetry;
