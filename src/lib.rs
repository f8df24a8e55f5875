//! Switchyard: a migration bridge from Socket.IO to HTTP streaming.
//!
//! One engine produces a transport-neutral stream of [`event::Event`]s per request; the
//! [`hub`] keeps it as an append-only log; the adapters in [`transport`] deliver that one
//! log to Socket.IO clients and to NDJSON/SSE clients. [`bridge::Bridge`] is the narrow
//! handle both adapters call. See ARCHITECTURE.md for the map and the invariants.
//!
//! This file is the module map and nothing else.

pub mod admin;
pub mod auth;
pub mod bridge;
pub mod capacity;
pub mod cluster;
pub mod config;
pub mod console;
pub mod engine;
pub mod error;
pub mod event;
pub mod flags;
pub mod hub;
pub mod metrics;
pub mod problem;
pub mod request;
pub mod routes;
pub mod server;
pub mod stats;
pub mod transport;

pub use bridge::Bridge;
pub use config::Config;
pub use error::ApiError;
