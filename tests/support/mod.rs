//! What every black-box test needs, in one place: waiting on a condition ([`eventually`],
//! [`eventually_async`]), the real binary on an ephemeral port ([`spawn`]), fake upstream
//! servers ([`upstream`]), the census of a running process ([`census`]), and the load
//! generator's lean Socket.IO clients with JSON events ([`lean`]), and what tests need
//! from outside Rust, checked with one line when missing ([`needs`]).
//!
//! A test binary includes it with `#[path = "../support/mod.rs"] mod support;` (the e2e
//! binary does, a cluster harness can).

#![allow(dead_code)]

pub mod census;
pub mod lean;
pub mod needs;
pub mod spawn;
pub mod upstream;

use std::path::PathBuf;
use std::time::Duration;

/// The longest any test waits for one thing to happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// The repository's root (the root crate's manifest directory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Waits until `cond` holds, polling; fails the test after `WAIT`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    eventually_async(what, || std::future::ready(cond())).await;
}

/// Waits until the async condition `cond` holds, polling; fails the test after `WAIT`.
pub async fn eventually_async<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(WAIT, what, cond).await;
}

/// Waits until the async condition `cond` holds, polling every 10 ms; fails the test once
/// `limit` has passed.
pub async fn eventually_within<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a request and reads its whole body as text.
pub async fn text(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

/// A fresh flags directory holding `flags_toml`.
pub fn flags_dir(flags_toml: &str) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("flags.toml"), flags_toml).unwrap();
    dir
}

/// A fresh flags directory holding a copy of the shipped flags (`flags/flags.example.toml`,
/// what a first run starts from).
pub fn shipped_flags_dir() -> PathBuf {
    flags_dir(&std::fs::read_to_string(repo().join("flags/flags.example.toml")).unwrap())
}
