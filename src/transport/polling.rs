//! Engine.IO long-polling pacing: at most [`MAX_PACKETS_PER_POLL`] packets per polling
//! response.
//!
//! python-engineio (python-socketio's transport) refuses a polling payload of more than 16
//! packets and drops the connection; Engine.IO servers, socketioxide included, send every
//! queued packet in one response. This layer sits in front of the Socket.IO service, keeps
//! the packets past the 16th of a response and answers the same session's next polls from
//! them, in order, before asking the Engine.IO server again. Only Engine.IO v4 text
//! payloads (`\x1e`-separated) are touched; it never reorders, drops or parses packets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use dashmap::DashMap;

/// The most packets one polling response carries (python-engineio's own limit).
pub const MAX_PACKETS_PER_POLL: usize = 16;
/// Held packets of a session that has not polled for this long are dropped: it is gone.
const STALE_AFTER: Duration = Duration::from_secs(120);
const SEPARATOR: u8 = 0x1e;

/// Packets held back per Engine.IO session id.
#[derive(Clone, Default)]
pub struct Pacer {
    held: Arc<DashMap<String, (Instant, VecDeque<Bytes>)>>,
}

impl Pacer {
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
    if let Some(payload) = pacer.take(&sid) {
        return payload_response(payload);
    }
    let resp = next.run(req).await;
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(payload) => {
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
