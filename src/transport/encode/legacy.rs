//! The legacy Socket.IO payloads: a route's `emit` vocabulary (or the neutral one), made
//! once per logged event and shared by every socket, and the legacy error event of a
//! refused request.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Mapped, Rendered, now_iso8601, raw, render};
use crate::event::{Event, EventKind};
use crate::hub::Entry;
use crate::request::StreamDesc;
use crate::routes::{Emit, EmitContext, EmitMap};

/// A legacy Socket.IO event, ready to emit: name and pre-serialised payload.
#[derive(Debug, Clone)]
pub struct LegacyFrame {
    pub event: Arc<str>,
    pub payload: Box<RawValue>,
}

/// The legacy Socket.IO event for a logged event, or `None` if the route drops it.
pub fn legacy_frame<'a>(entry: &'a Entry, stream: &StreamDesc<'_>) -> Option<Cow<'a, LegacyFrame>> {
    let encode = || encode_legacy(&entry.event(), stream);
    match Mapped::of(entry) {
        Some(m) => m.legacy.get_or_init(encode).as_ref().map(Cow::Borrowed),
        None => encode().map(Cow::Owned),
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
