//! Black-box tests: the real server on an ephemeral port, driven over the network by a
//! real HTTP client and the real Socket.IO clients (Node socket.io-client 4.x and 2.x,
//! python-socketio 5.x). One binary, so the suite links once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod abuse;
mod backpressure;
mod balancer;
mod cluster;
mod common;
mod console;
mod engines;
mod fanout;
mod faults;
mod flags;
mod hardening;
mod http;
mod lifecycle;
mod limits;
mod metrics;
mod socketio;
#[path = "../support/mod.rs"]
mod support;
