//! The HTTP wires: NDJSON lines and SSE frames (named or `data:`-only), for a route's
//! requester and resumers and for session followers; cut from a log entry's line when the
//! route keeps the neutral vocabulary, rendered once per event when it maps it.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::Value;

use super::{Mapped, Rendered, render};
use crate::event::{Event, EventKind, put_u64};
use crate::hub::Entry;
use crate::request::StreamDesc;
use crate::routes::{Emit, SseFraming};

/// The wire formats of HTTP subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// The route's NDJSON dialect (neutral envelope unless `[route.http] emit` maps it).
    Ndjson,
    /// The route's SSE dialect (framing and mapping from `[route.http]`).
    Sse,
    /// Session followers: neutral envelopes with `request_id` and `route`, one per line.
    SessionNdjson,
    /// Session followers over SSE.
    SessionSse,
}

impl Wire {
    pub fn content_type(self) -> &'static str {
        match self {
            Wire::Ndjson | Wire::SessionNdjson => "application/x-ndjson",
            Wire::Sse | Wire::SessionSse => "text/event-stream",
        }
    }

    pub fn is_sse(self) -> bool {
        matches!(self, Wire::Sse | Wire::SessionSse)
    }

    /// The transport label of a subscriber on this wire.
    pub fn transport(self) -> crate::request::Transport {
        if self.is_sse() {
            crate::request::Transport::Sse
        } else {
            crate::request::Transport::Ndjson
        }
    }

    /// Where a mapped encoding of this wire is cached (session wires are never mapped).
    fn slot(self) -> usize {
        match self {
            Wire::Ndjson | Wire::SessionNdjson => 0,
            Wire::Sse | Wire::SessionSse => 1,
        }
    }
}

/// Appends a logged event's bytes for an HTTP subscriber to `out`; false when the route's
/// mapping drops it. The neutral wires are cut from the neutral line as they are copied
/// (nothing encoded, nothing allocated per subscriber); mapped ones are encoded once per
/// event and shared.
pub fn write_http(entry: &Entry, stream: &StreamDesc<'_>, wire: Wire, out: &mut BytesMut) -> bool {
    let f = &entry.line;
    let kind = entry.kind.as_str().as_bytes();
    let http = &stream.route.http;
    let neutral = matches!(http.emit.rule(entry.kind), Emit::Neutral);
    match wire {
        Wire::Ndjson if neutral => out.extend_from_slice(f.as_bytes()),
        Wire::Sse if neutral && http.sse_framing == SseFraming::Named => {
            out.extend_from_slice(b"id: ");
            put_u64(out, entry.seq);
            out.extend_from_slice(b"\nevent: ");
            out.extend_from_slice(kind);
            out.extend_from_slice(b"\ndata: ");
            out.extend_from_slice(f.data_json());
            out.extend_from_slice(b"\n\n");
        }
        Wire::Sse if neutral => {
            let line = f.as_bytes();
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&line[..line.len().saturating_sub(1)]);
            out.extend_from_slice(b"\n\n");
        }
        Wire::SessionNdjson | Wire::SessionSse => {
            if wire == Wire::SessionSse {
                out.extend_from_slice(b"id: ");
                out.extend_from_slice(stream.id.as_str().as_bytes());
                out.put_u8(b':');
                put_u64(out, entry.seq);
                out.extend_from_slice(b"\nevent: ");
                out.extend_from_slice(kind);
                out.extend_from_slice(b"\ndata: ");
            }
            // The fields of `SessionEnvelope`, in its order.
            out.extend_from_slice(b"{\"request_id\":");
            json_str(out, stream.id.as_str());
            out.extend_from_slice(b",\"route\":");
            json_str(out, &stream.route.name);
            out.extend_from_slice(b",\"event\":\"");
            out.extend_from_slice(kind);
            out.extend_from_slice(b"\",\"seq\":");
            put_u64(out, entry.seq);
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(f.data_json());
            out.extend_from_slice(if wire == Wire::SessionSse {
                b"}\n\n"
            } else {
                b"}\n"
            });
        }
        Wire::Ndjson | Wire::Sse => {
            let encode = || encode_http(&entry.event(), stream, wire);
            match Mapped::of(entry) {
                Some(m) => match m.http[wire.slot()].get_or_init(encode) {
                    Some(bytes) => out.extend_from_slice(bytes),
                    None => return false,
                },
                None => match encode() {
                    Some(bytes) => out.extend_from_slice(&bytes),
                    None => return false,
                },
            }
        }
    }
    true
}

fn json_str(out: &mut BytesMut, s: &str) {
    let _ = serde_json::to_writer(out.writer(), s);
}

/// Encodes an event that is not in the log (heartbeats, a subscriber's own
/// `slow_consumer` end) for an HTTP subscriber.
pub fn encode_http(event: &Event, stream: &StreamDesc<'_>, wire: Wire) -> Option<Bytes> {
    match wire {
        Wire::Ndjson | Wire::Sse => {
            let http = &stream.route.http;
            let (name, body) = match render(&http.emit, event, stream) {
                Rendered::Neutral => (event.event.as_str(), Body::Envelope(event)),
                Rendered::Mapped(name, v) => (&**name, Body::Value(v)),
                Rendered::Dropped => {
                    // A dialect without heartbeats still gets SSE keep-alives.
                    return (wire == Wire::Sse && event.event == EventKind::Heartbeat)
                        .then(|| Bytes::from_static(b": heartbeat\n\n"));
                }
            };
            if wire == Wire::Ndjson {
                return Some(line(&body));
            }
            Some(match http.sse_framing {
                SseFraming::Named => {
                    let data: &dyn ErasedJson = match &body {
                        Body::Envelope(e) => &e.data,
                        Body::Value(v) => v,
                    };
                    sse_named(event.seq.map(SseId::Seq), name, data)
                }
                SseFraming::DataOnly if event.event == EventKind::Heartbeat => {
                    Bytes::from_static(b": heartbeat\n\n")
                }
                SseFraming::DataOnly => sse_data_only(&body),
            })
        }
        Wire::SessionNdjson | Wire::SessionSse => {
            let env = SessionEnvelope {
                request_id: stream.id.as_str(),
                route: &stream.route.name,
                event: event.event.as_str(),
                seq: event.seq,
                data: &event.data,
            };
            if wire == Wire::SessionNdjson {
                Some(line(&env))
            } else {
                let id = event.seq.map(|seq| SseId::Session(stream.id.as_str(), seq));
                Some(sse_named(id, event.event.as_str(), &env))
            }
        }
    }
}

/// A heartbeat for a subscriber that is not tied to one stream (session followers).
pub fn session_heartbeat(event: &Event, wire: Wire) -> Bytes {
    if wire.is_sse() {
        sse_named(None, event.event.as_str(), &event.data)
    } else {
        ndjson_line(event)
    }
}

#[derive(Serialize)]
struct SessionEnvelope<'a> {
    request_id: &'a str,
    route: &'a str,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    data: &'a Value,
}

enum Body<'a> {
    Envelope(&'a Event),
    Value(Value),
}

impl Serialize for Body<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Body::Envelope(e) => e.serialize(s),
            Body::Value(v) => v.serialize(s),
        }
    }
}

/// Lets `sse_named` take any serialisable payload through one code path.
trait ErasedJson {
    fn write_json(&self, out: &mut BytesMut);
}

impl<T: Serialize> ErasedJson for T {
    fn write_json(&self, out: &mut BytesMut) {
        // Serialising a Value or a derived struct into memory cannot fail.
        let _ = serde_json::to_writer((&mut *out).writer(), self);
    }
}

enum SseId<'a> {
    Seq(u64),
    Session(&'a str, u64),
}

fn sse_named(id: Option<SseId<'_>>, event: &str, data: &dyn ErasedJson) -> Bytes {
    use std::fmt::Write as _;
    let mut out = BytesMut::with_capacity(64 + event.len());
    // Writing into memory cannot fail.
    let _ = match id {
        Some(SseId::Seq(seq)) => writeln!(out, "id: {seq}"),
        Some(SseId::Session(rid, seq)) => writeln!(out, "id: {rid}:{seq}"),
        None => Ok(()),
    };
    out.put_slice(b"event: ");
    // Event names are neutral types or validated at load (no line breaks): see routes.
    out.put_slice(event.as_bytes());
    out.put_slice(b"\ndata: ");
    data.write_json(&mut out);
    out.put_slice(b"\n\n");
    out.freeze()
}

fn sse_data_only<T: Serialize>(data: &T) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(b"data: ");
    data.write_json(&mut out);
    out.put_slice(b"\n\n");
    out.freeze()
}

fn line<T: Serialize>(v: &T) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    v.write_json(&mut out);
    out.put_u8(b'\n');
    out.freeze()
}

/// The neutral NDJSON line of an event that is not in the log (a session heartbeat).
pub fn ndjson_line(event: &Event) -> Bytes {
    line(event)
}
