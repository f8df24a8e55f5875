//! Event → wire bytes: NDJSON lines, SSE frames, legacy Socket.IO payloads. The only place
//! wire bytes are made: the HTTP wires (`http.rs`) and the legacy Socket.IO payloads
//! (`legacy.rs`), around the one render of a route's `emit` rule (here).
//!
//! The log stores each event's neutral line (the core's [`crate::event::Line`]); the
//! neutral wires are cut from it while copying, and the mapped encodings are made once per
//! event into the entry's opaque cache and shared by all its subscribers, never once per
//! subscriber. Encoders see a plain [`StreamDesc`], never the live stream. Route mappings
//! (`emit` templates, SSE framing) are applied here and nowhere else.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::event::Event;
use crate::hub::Entry;
use crate::request::StreamDesc;
use crate::routes::template::iso8601;
use crate::routes::{Emit, EmitContext, EmitMap};

mod http;
mod legacy;

pub use http::{Wire, encode_http, ndjson_line, session_heartbeat, write_http};
pub use legacy::{LegacyFrame, encode_legacy, legacy_frame, legacy_refusal};

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
    use bytes::BytesMut;
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
            delivered_retention: Duration::from_secs(1),
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
        let mut scratch = crate::event::LineBuf::default();
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
