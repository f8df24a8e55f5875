//! Event → wire bytes: NDJSON lines, SSE frames, legacy Socket.IO payloads. The only place
//! wire bytes are made.
//!
//! The log stores each event's neutral line (the core's [`crate::event::Line`]); the
//! neutral wires are cut from it while copying, and the mapped encodings are made once per
//! event into the entry's opaque cache and shared by all its subscribers, never once per
//! subscriber. Encoders see a plain [`StreamDesc`], never the live stream. Route mappings
//! (`emit` templates, SSE framing) are applied here and nowhere else.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::event::put_u64;
use crate::event::{Event, EventKind};
use crate::hub::Entry;
use crate::request::StreamDesc;
use crate::routes::template::iso8601;
use crate::routes::{Emit, EmitContext, EmitMap, SseFraming};

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

/// A legacy Socket.IO event, ready to emit: name and pre-serialised payload.
#[derive(Debug, Clone)]
pub struct LegacyFrame {
    pub event: Arc<str>,
    pub payload: Box<RawValue>,
}

/// What is made once per logged event from its neutral line and shared by every
/// subscriber: the mapped encodings (legacy Socket.IO payloads, `[route.http] emit`
/// dialects), made on first use from the event decoded back from the line, kept in the
/// entry's cache (allocated only when one is needed).
#[derive(Default)]
struct Mapped {
    http: [OnceLock<Option<Bytes>>; 2],
    legacy: OnceLock<Option<LegacyFrame>>,
}

impl Mapped {
    /// The entry's mapped encodings (created on first use).
    fn of(entry: &Entry) -> Option<&Mapped> {
        entry
            .cache()
            .get_or_init(|| Box::new(Mapped::default()))
            .downcast_ref::<Mapped>()
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

/// The legacy Socket.IO event for a logged event, or `None` if the route drops it.
pub fn legacy_frame<'a>(entry: &'a Entry, stream: &StreamDesc<'_>) -> Option<Cow<'a, LegacyFrame>> {
    let encode = || encode_legacy(&entry.event(), stream);
    match Mapped::of(entry) {
        Some(m) => m.legacy.get_or_init(encode).as_ref().map(Cow::Borrowed),
        None => encode().map(Cow::Owned),
    }
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

/// Encodes an event for a Socket.IO subscriber of `stream` (uncached).
pub fn encode_legacy(event: &Event, stream: &StreamDesc<'_>) -> Option<LegacyFrame> {
    let Some(sio) = &stream.route.socketio else {
        return neutral_legacy(event, stream);
    };
    match render(&sio.emit, event, stream) {
        Rendered::Neutral => neutral_legacy(event, stream),
        Rendered::Mapped(name, v) => Some(LegacyFrame {
            event: name.clone(),
            payload: raw(&v)?,
        }),
        Rendered::Dropped => None,
    }
}

/// The neutral event names as shared strings, made once (a legacy frame per event would
/// otherwise allocate its name).
fn neutral_name(kind: EventKind) -> Arc<str> {
    static NAMES: LazyLock<Vec<Arc<str>>> = LazyLock::new(|| {
        EventKind::ALL
            .iter()
            .map(|k| Arc::from(k.as_str()))
            .collect()
    });
    NAMES
        .get(kind.index())
        .cloned()
        .unwrap_or_else(|| kind.as_str().into())
}

/// `$.now`: the current instant in ISO-8601, formatted once per millisecond per thread
/// (a burst of events in the same millisecond shares it).
fn now_iso8601() -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(u128, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != ms || last.1.is_empty() {
            *last = (ms, iso8601(now));
        }
        last.1.clone()
    })
}

fn neutral_legacy(event: &Event, stream: &StreamDesc<'_>) -> Option<LegacyFrame> {
    #[derive(Serialize)]
    struct Neutral<'a> {
        request_id: &'a str,
        seq: Option<u64>,
        data: &'a Value,
    }
    Some(LegacyFrame {
        event: neutral_name(event.event),
        payload: raw(&Neutral {
            request_id: stream.id.as_str(),
            seq: event.seq,
            data: &event.data,
        })?,
    })
}

enum Rendered<'a> {
    Neutral,
    Mapped(&'a Arc<str>, Value),
    Dropped,
}

fn render<'a>(map: &'a EmitMap, event: &Event, stream: &StreamDesc<'_>) -> Rendered<'a> {
    match map.rule(event.event) {
        Emit::Neutral => Rendered::Neutral,
        Emit::Dropped => Rendered::Dropped,
        Emit::Mapped(rule) => {
            let now = if rule.payload.uses_now() {
                now_iso8601()
            } else {
                String::new()
            };
            let ctx = EmitContext {
                event: event.event.as_str(),
                seq: event.seq,
                data: &event.data,
                request_id: stream.id.as_str(),
                session_id: stream.session_id,
                route: &stream.route.name,
                now: &now,
            };
            Rendered::Mapped(&rule.event, rule.payload.render_emit(&ctx))
        }
    }
}

/// Renders an error for a request that never became a stream (a refusal), through the
/// route's legacy `error` rule: the Socket.IO error event the legacy client listens to.
pub fn legacy_refusal(
    emit: &EmitMap,
    route: &str,
    request_id: Option<&str>,
    session_id: Option<&str>,
    data: &Value,
) -> Option<LegacyFrame> {
    let event = Event {
        event: EventKind::Error,
        seq: None,
        data: data.clone(),
    };
    match emit.rule(EventKind::Error) {
        Emit::Dropped => None,
        Emit::Neutral => Some(LegacyFrame {
            event: "error".into(),
            payload: raw(&serde_json::json!({
                "request_id": request_id, "seq": null, "data": data
            }))?,
        }),
        Emit::Mapped(rule) => {
            let now = now_iso8601();
            let ctx = EmitContext {
                event: event.event.as_str(),
                seq: None,
                data: &event.data,
                request_id: request_id.unwrap_or_default(),
                session_id,
                route,
                now: &now,
            };
            Some(LegacyFrame {
                event: rule.event.clone(),
                payload: raw(&rule.payload.render_emit(&ctx))?,
            })
        }
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

fn raw<T: Serialize>(v: &T) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::event::Line;
    use crate::hub::Stream;
    use crate::hub::{Hub, HubConfig};
    use crate::request::{RequestId, Transport};
    use crate::routes::Routes;
    use serde_json::json;
    use std::time::Duration;

    const ROUTES: &str = r#"
[[route]]
name = "chat"
http = "/chat"
engine = { kind = "script" }
[route.socketio]
request_event = "chat_message"
[route.socketio.emit]
chunk = { event = "chat_chunk", payload = { chunk = "$.data.text", sid = "$.session_id", n = "$.seq" } }

[[route]]
name = "old"
engine = { kind = "script" }
[route.http]
path = "/old"
sse_framing = "data_only"
emit = { chunk = { payload = { delta = "$.data.text" } } }

[[route]]
name = "agent"
http = "/agent"
engine = { kind = "script" }
"#;

    fn stream(route: &str) -> std::sync::Arc<Stream> {
        let routes = Routes::parse(ROUTES, "t").unwrap();
        let hub = Hub::new(HubConfig {
            max_streams: 10,
            max_streams_per_subject: 0,
            replay_max_bytes: 1 << 20,
            lag: crate::hub::LagPolicy::default(),
            max_output_bytes: 1 << 20,
            max_live_bytes: 1 << 30,
            replay_max_total_bytes: 1 << 30,
            retention: Duration::from_secs(1),
        });
        let route = routes.get(route).unwrap().clone();
        let metrics = crate::metrics::Metrics::new(&routes);
        let (s, _c) = hub
            .create(
                RequestId::parse("r1").unwrap(),
                route.clone(),
                Some("s1".into()),
                None,
                Transport::Ndjson,
                metrics.stream(&route.name, Transport::Ndjson),
            )
            .unwrap();
        s
    }

    fn chunk() -> Event {
        Event {
            event: EventKind::Chunk,
            seq: Some(3),
            data: json!({"text": "Hel"}),
        }
    }

    /// The entry the stream logs for a chunk of `text` (written by its text alone).
    fn logged_chunk(s: &std::sync::Arc<Stream>, text: &str) -> std::sync::Arc<Entry> {
        use crate::engine::Sink;
        let mut cursor = s.subscribe_from(0);
        s.start();
        assert!(s.emit_chunk(text));
        let mut last = None;
        while let Some(crate::hub::Batch::Events(entries)) = cursor.try_batch(16) {
            last = entries.last().cloned();
        }
        last.unwrap()
    }

    #[test]
    fn chunk_lines_written_by_text_are_the_lines_of_the_event() {
        let mut scratch = Vec::new();
        for text in [
            "Hel",
            "",
            "quote \" and \\ and\nnew line",
            "\u{1F600} \u{7f} \u{1}",
        ] {
            let event = Event {
                event: EventKind::Chunk,
                seq: Some(12),
                data: json!({ "text": text }),
            };
            let by_text = Line::chunk(12, text, &mut scratch);
            let by_event = Line::of(&event, &mut scratch);
            assert_eq!(by_text.as_bytes(), by_event.as_bytes());
            assert_eq!(
                by_text.as_bytes(),
                &encode_http(&event, &stream("chat").describe(), Wire::Ndjson).unwrap()[..]
            );
            let data: Value = serde_json::from_slice(by_text.data_json()).unwrap();
            assert_eq!(data, json!({ "text": text }));
        }
    }

    #[test]
    fn wires_cut_from_the_log_equal_the_encoder() {
        for route in ["chat", "old", "agent"] {
            let s = stream(route);
            let entry = logged_chunk(&s, "Hel \"lo\"");
            let event = entry.event();
            assert_eq!(event.data, json!({"text": "Hel \"lo\""}));
            for wire in [
                Wire::Ndjson,
                Wire::Sse,
                Wire::SessionNdjson,
                Wire::SessionSse,
            ] {
                let mut out = BytesMut::new();
                let written = write_http(&entry, &s.describe(), wire, &mut out);
                let encoded = encode_http(&event, &s.describe(), wire);
                assert_eq!(written, encoded.is_some(), "{route} {wire:?}");
                assert_eq!(
                    &out[..],
                    &encoded.unwrap_or_default()[..],
                    "{route} {wire:?}"
                );
            }
            // The mapped legacy frame is made from the decoded event, once.
            let a = legacy_frame(&entry, &s.describe()).map(|f| f.payload.get().to_string());
            let b = encode_legacy(&event, &s.describe()).map(|f| f.payload.get().to_string());
            assert_eq!(a, b, "{route}");
        }
    }

    #[test]
    fn neutral_ndjson_and_named_sse() {
        let s = stream("chat");
        assert_eq!(
            encode_http(&chunk(), &s.describe(), Wire::Ndjson).unwrap(),
            "{\"event\":\"chunk\",\"seq\":3,\"data\":{\"text\":\"Hel\"}}\n"
        );
        assert_eq!(
            encode_http(&chunk(), &s.describe(), Wire::Sse).unwrap(),
            "id: 3\nevent: chunk\ndata: {\"text\":\"Hel\"}\n\n"
        );
        let hb = Event::heartbeat(7);
        assert_eq!(
            encode_http(&hb, &s.describe(), Wire::Sse).unwrap(),
            "event: heartbeat\ndata: {\"timestamp\":7}\n\n"
        );
    }

    #[test]
    fn session_wire_carries_the_request_id() {
        let s = stream("chat");
        assert_eq!(
            encode_http(&chunk(), &s.describe(), Wire::SessionNdjson).unwrap(),
            "{\"request_id\":\"r1\",\"route\":\"chat\",\"event\":\"chunk\",\"seq\":3,\"data\":{\"text\":\"Hel\"}}\n"
        );
        assert!(
            encode_http(&chunk(), &s.describe(), Wire::SessionSse)
                .unwrap()
                .starts_with(b"id: r1:3\nevent: chunk\ndata: {\"request_id\"")
        );
    }

    #[test]
    fn http_mapping_and_data_only_framing() {
        let s = stream("old");
        assert_eq!(
            encode_http(&chunk(), &s.describe(), Wire::Sse).unwrap(),
            "data: {\"delta\":\"Hel\"}\n\n"
        );
        assert_eq!(
            encode_http(&chunk(), &s.describe(), Wire::Ndjson).unwrap(),
            "{\"delta\":\"Hel\"}\n"
        );
        assert_eq!(
            encode_http(&Event::heartbeat(1), &s.describe(), Wire::Sse).unwrap(),
            ": heartbeat\n\n"
        );
        let end = Event {
            event: EventKind::End,
            seq: Some(4),
            data: json!({"reason": "completed"}),
        };
        assert!(
            encode_http(&end, &s.describe(), Wire::Ndjson).is_none(),
            "unmapped types are dropped"
        );
    }

    #[test]
    fn legacy_mapped_neutral_and_dropped() {
        let s = stream("chat");
        let f = encode_legacy(&chunk(), &s.describe()).unwrap();
        assert_eq!(&*f.event, "chat_chunk");
        assert_eq!(f.payload.get(), r#"{"chunk":"Hel","n":3,"sid":"s1"}"#);
        let end = Event {
            event: EventKind::End,
            seq: Some(4),
            data: json!({"reason": "completed"}),
        };
        assert!(encode_legacy(&end, &s.describe()).is_none());
        let a = stream("agent");
        let f = encode_legacy(&chunk(), &a.describe()).unwrap();
        assert_eq!(&*f.event, "chunk");
        assert_eq!(
            f.payload.get(),
            r#"{"request_id":"r1","seq":3,"data":{"text":"Hel"}}"#
        );
    }
}
