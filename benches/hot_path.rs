//! The per-event hot path, piece by piece (`cargo bench --bench hot_path`):
//! - `encode/*`: one chunk event encoded for each wire (NDJSON line, SSE frame, the legacy
//!   Socket.IO payload of the shipped `chat` route, with its `$.now` timestamp), uncached;
//! - `template/*`: rendering the shipped `chat` route's request and chunk templates;
//! - `hub/append_read_{1,100}`: one event appended and read by 1 and by 100 cursors;
//! - `per_event/*`: append + read + NDJSON frame, with and without the per-event metrics
//!   count; the ratio of the two is the cost of counting.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::sync::Arc;
use switchyard::engine::Sink;
use switchyard::event::{Event, EventKind, Line, LineBuf};
use switchyard::hub::{Batch, Cursor, Hub, HubConfig, Stream};
use switchyard::metrics::Metrics;
use switchyard::request::{RequestId, Transport};
use switchyard::routes::template::iso8601;
use switchyard::routes::{EmitContext, RequestContext, Routes, Template};
use switchyard::transport::encode::{Wire, encode_http, encode_legacy, write_http};

fn hub() -> std::sync::Arc<Hub> {
    Hub::new(HubConfig {
        max_streams: 1000,
        max_streams_per_subject: 0,
        replay_max_bytes: 1 << 20,
        lag: switchyard::hub::LagPolicy::default(),
        max_output_bytes: 1 << 20,
        max_live_bytes: 1 << 30,
        replay_max_total_bytes: 1 << 30,
        retention: Duration::from_secs(60),
        delivered_retention: Duration::from_secs(5),
    })
}

fn shipped_routes() -> Option<Routes> {
    Routes::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml")).ok()
}

/// A started stream of `route` on a fresh hub, with its requester's cursor.
fn stream_of(
    route: &str,
    id: &str,
    session: Option<&str>,
) -> Option<(Arc<Stream>, Cursor, Arc<Metrics>)> {
    let routes = shipped_routes()?;
    let route = routes.get(route)?.clone();
    let metrics = Metrics::new(&routes);
    let (stream, cursor) = hub()
        .create(
            RequestId::parse(id).ok()?,
            route.clone(),
            session.map(Into::into),
            None,
            Transport::Ndjson,
            metrics.stream(&route.name, Transport::Ndjson),
        )
        .ok()?;
    stream.start();
    Some((stream, cursor, metrics))
}

fn chunk() -> Event {
    Event {
        event: EventKind::Chunk,
        seq: Some(7),
        data: json!({"text": "thirty-two bytes of chunk text.."}),
    }
}

fn encode(c: &mut Criterion) {
    let Some((stream, _cursor, _)) = stream_of("chat", "bench-encode", Some("s1")) else {
        return;
    };
    let event = chunk();
    let mut group = c.benchmark_group("encode");
    group.bench_function("ndjson", |b| {
        b.iter(|| {
            black_box(encode_http(
                black_box(&event),
                &stream.describe(),
                Wire::Ndjson,
            ))
        })
    });
    group.bench_function("sse", |b| {
        b.iter(|| {
            black_box(encode_http(
                black_box(&event),
                &stream.describe(),
                Wire::Sse,
            ))
        })
    });
    group.bench_function("socketio_legacy", |b| {
        b.iter(|| black_box(encode_legacy(black_box(&event), &stream.describe())))
    });
    group.finish();
}

fn templates(c: &mut Criterion) {
    let (Ok(request), Ok(emit)) = (
        Template::compile_request(&json!({
            "messages": [{"role": "user", "content": "$.message"}],
            "session_id": "$.session_id", "workspace_id": "$.workspace_id",
            "options": "$.options", "request_id": "$.request_id"})),
        Template::compile_emit(&json!({
            "session_id": "$.session_id", "chunk": "$.data.text", "timestamp": "$.now"})),
    ) else {
        return;
    };
    let payload = json!({"message": "hello brave new world", "session_id": "s1",
        "workspace_id": "w1", "options": {"chunks": 200, "chunk_bytes": 32}});
    let auth = json!({});
    let data = json!({"text": "thirty-two bytes of chunk text.."});
    let mut group = c.benchmark_group("template");
    group.bench_function("render_request", |b| {
        b.iter(|| {
            black_box(request.render_request(&RequestContext {
                payload: black_box(&payload),
                auth: &auth,
            }))
        })
    });
    group.bench_function("render_emit_with_now", |b| {
        b.iter(|| {
            let now = iso8601(SystemTime::now());
            black_box(emit.render_emit(&EmitContext {
                event: "chunk",
                seq: Some(7),
                data: black_box(&data),
                request_id: "bench",
                session_id: Some("s1"),
                route: "chat",
                now: &now,
            }))
        })
    });
    group.finish();
}

fn hub_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub");
    for subscribers in [1usize, 100] {
        let Some((stream, first, _)) = stream_of("chat", &format!("fanout-{subscribers}"), None)
        else {
            return;
        };
        let mut cursors = vec![first];
        cursors.extend((1..subscribers).map(|_| stream.subscribe_from_head()));
        group.bench_function(format!("append_read_{subscribers}"), |b| {
            b.iter(|| {
                stream.emit(EventKind::Chunk, json!({"text": "sixteen bytes ok"}));
                for cursor in &mut cursors {
                    black_box(cursor.try_batch(1));
                }
            })
        });
    }
    group.finish();
}

fn per_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_event");
    let mut counters = None;
    for counting in [false, true] {
        let id = if counting { "counted" } else { "plain" };
        let Some((stream, mut cursor, metrics)) = stream_of("agent", id, None) else {
            return;
        };
        let counters = counters
            .get_or_insert_with(|| metrics.subscriber("agent", Transport::Ndjson))
            .clone();
        let name = if counting {
            "append_read_encode_count"
        } else {
            "append_read_encode"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                stream.emit(EventKind::Chunk, json!({"text": "sixteen bytes ok"}));
                if let Some(Batch::Events(entries)) = cursor.try_batch(1) {
                    let mut out = BytesMut::with_capacity(128);
                    for e in &entries {
                        black_box(write_http(e, &stream.describe(), Wire::Ndjson, &mut out));
                        if counting {
                            counters.delivered(e.kind);
                        }
                    }
                    black_box(out);
                }
            })
        });
    }
    // What engines do per token: `emit_chunk` (no JSON value built), then read + encode.
    if let Some((stream, mut cursor, _)) = stream_of("agent", "text", None) {
        group.bench_function("append_text_read_encode", |b| {
            b.iter(|| {
                stream.emit_chunk(black_box("sixteen bytes ok"));
                if let Some(Batch::Events(entries)) = cursor.try_batch(1) {
                    let mut out = BytesMut::with_capacity(128);
                    for e in &entries {
                        black_box(write_http(e, &stream.describe(), Wire::Ndjson, &mut out));
                    }
                    black_box(out);
                }
            })
        });
    }
    group.finish();
    let Some(counters) = counters else { return };
    c.bench_function("count_one_event", |b| {
        b.iter(|| counters.delivered(black_box(EventKind::Chunk)))
    });
}

/// A stream's last line: its `completion`, carrying the whole text (100 chunks of 32
/// bytes), written as the log writes it.
fn completion_line(c: &mut Criterion) {
    let text: String = (0..3200u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let event = Event {
        event: EventKind::Completion,
        seq: Some(101),
        data: json!({"status": "complete", "output": text}),
    };
    let mut buf = LineBuf::default();
    c.bench_function("line/completion_3200", |b| {
        b.iter(|| black_box(Line::of(black_box(&event), &mut buf)))
    });
}

criterion_group!(
    benches,
    encode,
    templates,
    hub_fanout,
    per_event,
    completion_line
);
criterion_main!(benches);
