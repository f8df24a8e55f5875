//! The adapters: decode a wire request into a [`crate::request::StreamRequest`], encode
//! events into wire frames. Policy lives in the core ([`crate::bridge`]), not here.

pub mod cors;
pub mod encode;
pub mod http;
pub mod polling;
pub mod socketio;
