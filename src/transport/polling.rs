//! Engine.IO long-polling pacing: at most [`MAX_PACKETS_PER_POLL`] packets per polling
//! response.
//!
//! python-engineio (python-socketio's transport) refuses a polling payload of more than 16
//! packets and drops the connection; Engine.IO servers, socketioxide included, send every
//! queued packet in one response. This layer sits in front of the Socket.IO service, keeps
//! the packets past the 16th of a response and answers the same session's next polls from
//! them, in order, before asking the Engine.IO server again. Only Engine.IO v4 text
//! payloads (`\x1e`-separated) are touched; it never reorders, drops or parses packets.
//!
//! It also watches each session's polls for shutdown: engineioxide drops whatever a
//! polling session has not fetched yet when the server closes it, so before the sockets
//! are closed [`Pacer::flushed`] waits (briefly, bounded) until every polling client has
//! come back for its last packets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use dashmap::DashMap;
// tokio's clock (the system's, except in tests with paused time).
use tokio::time::Instant;

/// The most packets one polling response carries (python-engineio's own limit).
pub const MAX_PACKETS_PER_POLL: usize = 16;
/// Held packets of a session that has not polled for this long are dropped: it is gone.
const STALE_AFTER: Duration = Duration::from_secs(120);
const SEPARATOR: u8 = 0x1e;
/// A poll that has waited this long with nothing to send found its session's queue empty.
const SETTLED: Duration = Duration::from_millis(100);
/// At shutdown, sessions that polled within this long are waited for.
const RECENT: Duration = Duration::from_secs(2);
/// Sessions tracked before the poll table is pruned of sessions gone quiet.
const PRUNE_AT: usize = 1024;

/// A polling session's latest poll.
struct Poll {
    /// When the poll in progress started (`None`: between polls).
    waiting_since: Option<Instant>,
    /// When the latest poll ended.
    ended: Instant,
}

/// Packets held back per Engine.IO session id, and each session's latest poll.
#[derive(Clone)]
pub struct Pacer {
    held: Arc<DashMap<String, (Instant, VecDeque<Bytes>)>>,
    polls: Arc<DashMap<String, Poll>>,
    prune_at: Arc<AtomicUsize>,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            held: Arc::default(),
            polls: Arc::default(),
            prune_at: Arc::new(AtomicUsize::new(PRUNE_AT)),
        }
    }
}

/// Marks a poll as ended when its request finishes or is dropped (client gone).
struct PollGuard<'a> {
    pacer: &'a Pacer,
    sid: &'a str,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut p) = self.pacer.polls.get_mut(self.sid) {
            p.waiting_since = None;
            p.ended = Instant::now();
        }
    }
}

impl Pacer {
    fn poll_started<'a>(&'a self, sid: &'a str) -> PollGuard<'a> {
        let now = Instant::now();
        if let Some(mut p) = self.polls.get_mut(sid) {
            p.waiting_since = Some(now);
        } else {
            if self.polls.len() >= self.prune_at.load(Ordering::Relaxed) {
                self.polls
                    .retain(|_, p| p.waiting_since.is_some() || p.ended.elapsed() < STALE_AFTER);
                self.prune_at
                    .store((self.polls.len() * 2).max(PRUNE_AT), Ordering::Relaxed);
            }
            self.polls.insert(
                sid.to_string(),
                Poll {
                    waiting_since: Some(now),
                    ended: now,
                },
            );
        }
        PollGuard { pacer: self, sid }
    }

    /// A session that will not poll again (closed, or upgraded to WebSocket).
    fn forget(&self, sid: &str) {
        self.polls.remove(sid);
    }

    /// Waits, at most `limit`, until every polling session active in the last moments
    /// before `since` has a poll waiting for packets, unanswered for a while after
    /// `since`: its client has fetched everything queued before `since`. Called at
    /// shutdown, after the streams' last events were queued and before the sockets are
    /// closed.
    pub async fn flushed(&self, since: impl Into<Instant>, limit: Duration) {
        let since = since.into();
        let deadline = Instant::now() + limit;
        let done = || {
            let now = Instant::now();
            self.polls.iter().all(|p| match p.waiting_since {
                Some(start) => now.saturating_duration_since(start.max(since)) >= SETTLED,
                None => p.ended + RECENT < since,
            })
        };
        while !done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes up to the limit of held packets for `sid` as one payload.
    fn take(&self, sid: &str) -> Option<Bytes> {
        let mut entry = self.held.get_mut(sid)?;
        let (_, packets) = entry.value_mut();
        let n = packets.len().min(MAX_PACKETS_PER_POLL);
        let payload = join(packets.drain(..n));
        let empty = packets.is_empty();
        drop(entry);
        if empty {
            self.held.remove(sid);
        }
        Some(payload)
    }

    /// Splits a payload; returns what to send now and keeps the rest for `sid`.
    fn split(&self, sid: &str, payload: Bytes) -> Bytes {
        let count = payload.iter().filter(|b| **b == SEPARATOR).count() + 1;
        if count <= MAX_PACKETS_PER_POLL {
            return payload;
        }
        let mut packets: VecDeque<Bytes> = VecDeque::with_capacity(count);
        let mut start = 0;
        for (i, b) in payload.iter().enumerate() {
            if *b == SEPARATOR {
                packets.push_back(payload.slice(start..i));
                start = i + 1;
            }
        }
        packets.push_back(payload.slice(start..));
        let now = Instant::now();
        self.held
            .retain(|_, (t, _)| now.duration_since(*t) < STALE_AFTER);
        let first = join(packets.drain(..MAX_PACKETS_PER_POLL));
        self.held.insert(sid.to_string(), (now, packets));
        first
    }
}

fn join(packets: impl Iterator<Item = Bytes>) -> Bytes {
    let mut out = Vec::new();
    for (i, p) in packets.enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        out.extend_from_slice(&p);
    }
    Bytes::from(out)
}

/// The Engine.IO session id of a v4 polling GET, if this is one.
fn polling_sid(req: &Request) -> Option<String> {
    if req.method() != Method::GET || !req.uri().path().starts_with("/socket.io") {
        return None;
    }
    let query = req.uri().query()?;
    let (mut sid, mut polling, mut v4) = (None, false, false);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sid", v)) => sid = Some(v.to_string()),
            Some(("transport", "polling")) => polling = true,
            Some(("EIO", "4")) => v4 = true,
            _ => {}
        }
    }
    sid.filter(|_| polling && v4)
}

fn payload_response(payload: Bytes) -> Response {
    let mut resp = Response::new(Body::from(payload));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    resp
}

/// The middleware: serves held packets first, splits oversized payloads.
pub async fn pace(State(pacer): State<Pacer>, req: Request, next: Next) -> Response {
    let Some(sid) = polling_sid(&req) else {
        return next.run(req).await;
    };
    let _poll = pacer.poll_started(&sid);
    if let Some(payload) = pacer.take(&sid) {
        return payload_response(payload);
    }
    let resp = next.run(req).await;
    if resp.status() != StatusCode::OK {
        pacer.forget(&sid);
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(payload) => {
            // An empty answer: the session closed; a NOOP: it moves to WebSocket.
            if payload.is_empty() || payload.as_ref() == b"6" {
                pacer.forget(&sid);
            }
            let payload = pacer.split(&sid, payload);
            Response::from_parts(parts, Body::from(payload))
        }
        Err(_) => Response::from_parts(parts, Body::empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize) -> Bytes {
        let packets: Vec<String> = (0..n).map(|i| format!("42[\"e\",{i}]")).collect();
        Bytes::from(packets.join("\u{1e}"))
    }

    // Paused time: the clock moves only when every task waits, so what these tests order
    // (a poll after a wait, a bound reached) cannot be reordered by a loaded machine.
    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_a_recent_polling_session_to_poll_again() {
        let p = Pacer::default();
        drop(p.poll_started("a"));
        let t0 = Instant::now();
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.flushed(Instant::now(), Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiter.is_finished(),
            "its last packets may still be queued"
        );
        let _waiting = p.poll_started("a");
        waiter.await.unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_does_not_wait_for_closed_sessions_and_waits_boundedly() {
        let p = Pacer::default();
        drop(p.poll_started("closed"));
        p.forget("closed");
        let t0 = Instant::now();
        p.flushed(Instant::now(), Duration::from_secs(10)).await;
        assert!(t0.elapsed() < Duration::from_secs(1));
        drop(p.poll_started("silent"));
        let t0 = Instant::now();
        p.flushed(Instant::now(), Duration::from_millis(300)).await;
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn small_payloads_pass_untouched() {
        let p = Pacer::default();
        let b = payload(16);
        assert_eq!(p.split("s", b.clone()), b);
        assert!(p.take("s").is_none());
    }

    #[test]
    fn large_payloads_go_out_sixteen_at_a_time_in_order() {
        let p = Pacer::default();
        let mut got = vec![p.split("s", payload(40))];
        while let Some(more) = p.take("s") {
            got.push(more);
        }
        assert_eq!(got.len(), 3);
        let all: Vec<String> = got
            .iter()
            .flat_map(|b| {
                String::from_utf8(b.to_vec())
                    .unwrap()
                    .split('\u{1e}')
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(all.len(), 40);
        for (i, p) in all.iter().enumerate() {
            assert_eq!(*p, format!("42[\"e\",{i}]"));
        }
        assert!(
            got.iter()
                .all(|b| b.iter().filter(|c| **c == SEPARATOR).count() < 16)
        );
    }
}
