//! Fault injection: engines that fail, stall or panic mid-stream, clients that vanish at
//! scale, readers that stop reading, and SIGTERM under load. Each test checks that every
//! subscriber gets either every event or an explicit end, that nothing else running is
//! disturbed, and that nothing is left behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard::routes::Routes;
use tokio::sync::mpsc;

use crate::common::*;
use crate::support::upstream::{Dropped, respond, tracked};

/// Chunks of every healthy stream that runs beside a fault (one every `HEALTHY_MS`).
const HEALTHY_CHUNKS: u64 = 60;
const HEALTHY_MS: u64 = 25;

/// The legacy `chat` vocabulary of the shipped routes.toml.
const LEGACY_EMIT: &str = r#"
[route.socketio.emit]
chunk = { event = "chat_chunk", payload = { session_id = "$.session_id", chunk = "$.data.text", timestamp = "$.now" } }
completion = { event = "chat_complete", payload = { session_id = "$.session_id", full_response = "$.data.output", timestamp = "$.now" } }
error = { event = "error", payload = { message = "$.data.message", error_type = "$.data.error_type", session_id = "$.session_id", timestamp = "$.now" } }
"#;

const FAULT_FLAGS: &str =
    "version = 1\n[route.chat]\nmode = \"dual\"\n[route.up]\nmode = \"dual\"\n";

/// Two routes with the legacy chat vocabulary: `chat` on the script engine with fault
/// drills on, `up` on the ndjson engine in front of `upstream`.
fn fault_routes(upstream: &str) -> Routes {
    let text = format!(
        r#"
[[route]]
name = "chat"
http = "/api/ai/chat/unified"
engine = {{ kind = "script", fault_drills = true }}
[route.socketio]
request_event = "chat_message"
request = {{ messages = [{{ role = "user", content = "$.message" }}], session_id = "$.session_id", options = "$.options", request_id = "$.request_id" }}
{LEGACY_EMIT}
[[route]]
name = "up"
http = "/up"
engine = {{ kind = "ndjson", url = "{upstream}/stream", retries = 0 }}
[route.socketio]
request_event = "up_message"
request = {{ fault = "$.fault", session_id = "$.session_id", request_id = "$.request_id" }}
{LEGACY_EMIT}
"#
    );
    Routes::parse(&text, "faults").unwrap_or_else(|e| panic!("{e}"))
}

/// The fake upstream of the `up` route. The bridge POSTs the client's body; its `fault`
/// field picks the answer: `ok` (HEALTHY_CHUNKS chunks, then completion and end),
/// `error` (3 chunks, then a line that is not JSON) or `stall` (3 chunks, then silence
/// with the connection open). `closed` records when the bridge hung up on a stall.
struct FaultUpstream {
    base: String,
    closed: Dropped,
}

fn line(v: Value) -> Result<Bytes, std::io::Error> {
    Ok(Bytes::from(format!("{v}\n")))
}

async fn start_upstream() -> FaultUpstream {
    let closed: Dropped = Arc::default();
    let up = Upstream::start({
        let closed = closed.clone();
        move |_, seen| {
            let closed = closed.clone();
            async move {
                let fault = seen.body["fault"].as_str().unwrap_or("ok").to_string();
                let stall = fault == "stall";
                let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
                tokio::spawn(async move {
                    let chunks = if fault == "ok" { HEALTHY_CHUNKS } else { 3 };
                    for i in 0..chunks {
                        let text = format!("u{i} ");
                        let chunk = json!({"event": "chunk", "data": {"text": text}});
                        if tx.send(line(chunk)).await.is_err() {
                            return;
                        }
                        // The healthy pace: a chunk every HEALTHY_MS, as a model writes.
                        tokio::time::sleep(Duration::from_millis(HEALTHY_MS)).await;
                    }
                    match fault.as_str() {
                        "ok" => {
                            let done =
                                json!({"event": "completion", "data": {"status": "complete"}});
                            let _ = tx.send(line(done)).await;
                            let _ = tx
                                .send(line(
                                    json!({"event": "end", "data": {"reason": "completed"}}),
                                ))
                                .await;
                        }
                        "error" => {
                            let _ = tx
                                .send(Ok(Bytes::from_static(b"{\"event\": \"chunk\", oops\n")))
                                .await;
                            tx.closed().await;
                        }
                        _ => tx.closed().await,
                    }
                });
                let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                });
                let body = if stall {
                    tracked(frames.boxed(), closed)
                } else {
                    axum::body::Body::from_stream(frames)
                };
                respond(200, "application/x-ndjson", body)
            }
        }
    })
    .await;
    FaultUpstream {
        base: up.base,
        closed,
    }
}

/// The whole body of a response, failing the test if it does not end within `WAIT`.
async fn body_text(resp: reqwest::Response) -> String {
    tokio::time::timeout(WAIT, resp.text())
        .await
        .expect("the response ends in time")
        .unwrap()
}

async fn engine_errors(s: &Server, route: &str, engine: &str) -> f64 {
    let m = scrape(&get_text(&s.url("/metrics")).await);
    let key = format!("switchyard_engine_errors_total{{engine=\"{engine}\",route=\"{route}\"}}");
    *m.get(&key).unwrap_or_else(|| panic!("no sample {key}"))
}

/// The neutral envelope of an SSE frame (`id` is the seq), for comparing with NDJSON.
fn sse_envelopes(text: &str) -> Vec<Value> {
    parse_sse(text)
        .into_iter()
        .filter(|f| f.event.as_deref() != Some("heartbeat"))
        .map(|f| {
            json!({
                "event": f.event.unwrap(),
                "seq": f.id.unwrap().parse::<u64>().unwrap(),
                "data": f.data.unwrap(),
            })
        })
        .collect()
}

/// A session follower's envelopes of one stream, without the multiplexing fields.
fn of_stream(events: &[Value], request_id: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|v| v["request_id"] == request_id)
        .map(|v| json!({"event": v["event"], "seq": v["seq"], "data": v["data"]}))
        .collect()
}

/// Healthy streams on every transport that run while a fault happens elsewhere.
struct Healthy {
    ndjson: LineReader,
    sse: reqwest::Response,
    upstream: LineReader,
    socket: Sio,
}

impl Healthy {
    /// Starts them and waits until each has delivered its first chunk.
    async fn start(s: &Server) -> Healthy {
        let opts = json!({"chunks": HEALTHY_CHUNKS, "interval_ms": HEALTHY_MS});
        let mut ndjson = LineReader::open(
            http()
                .post(s.url(CHAT))
                .json(&json!({"session_id": "healthy", "options": opts})),
        )
        .await;
        let sse = http()
            .post(s.url(CHAT))
            .header("accept", "text/event-stream")
            .json(&json!({"session_id": "healthy", "options": opts}))
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status(), 200);
        let mut upstream = LineReader::open(
            http()
                .post(s.url("/up"))
                .json(&json!({"fault": "ok", "session_id": "healthy"})),
        )
        .await;
        let mut socket = Sio::spawn(
            Client::Node,
            sio_spec(
                s,
                &["websocket"],
                json!([
                    {"emit": "chat_message", "data": {"message": "x", "session_id": "healthy-sio", "options": opts}, "ack": true},
                    {"wait_for": "chat_complete", "count": 1, "timeout_ms": 25000}
                ]),
            ),
        );
        ndjson.until(|v| v["event"] == "chunk").await;
        upstream.until(|v| v["event"] == "chunk").await;
        socket.expect_event("chat_chunk").await;
        Healthy {
            ndjson,
            sse,
            upstream,
            socket,
        }
    }

    /// Every healthy stream completed with every chunk, in order, and no error.
    async fn check(mut self) {
        let want: Vec<String> = (0..HEALTHY_CHUNKS)
            .map(|i| switchyard::engine::script::generated_chunk(i, 16))
            .collect();
        // `until` consumed the lines up to the first chunk; `rest` has the others.
        let all = self.ndjson.rest().await;
        let chunks: Vec<String> = all
            .iter()
            .filter(|e| e["event"] == "chunk")
            .map(|e| e["data"]["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(chunks, want[1..].to_vec(), "healthy NDJSON stream");
        assert_eq!(all.last().unwrap()["data"]["reason"], "completed");
        assert!(all.iter().all(|e| e["event"] != "error"), "{all:?}");

        let sse = sse_envelopes(&body_text(self.sse).await);
        assert_eq!(check_rules(&sse), want, "healthy SSE stream");
        assert_eq!(sse.last().unwrap()["data"]["reason"], "completed");

        let up = self.upstream.rest().await;
        let up_chunks: Vec<Value> = up
            .iter()
            .filter(|e| e["event"] == "chunk")
            .map(|e| e["data"]["text"].clone())
            .collect();
        let up_want: Vec<Value> = (1..HEALTHY_CHUNKS)
            .map(|i| json!(format!("u{i} ")))
            .collect();
        assert_eq!(up_chunks, up_want, "healthy upstream stream");
        assert_eq!(up.last().unwrap()["data"]["reason"], "completed");

        let (lines, code) = self.socket.finish().await;
        assert_eq!(code, 0, "{lines:?}");
        let events = events_of(&lines);
        let chunks: Vec<&str> = events
            .iter()
            .filter(|(n, _)| n == "chat_chunk")
            .map(|(_, d)| d["chunk"].as_str().unwrap())
            .collect();
        assert_eq!(chunks, want, "healthy Socket.IO stream");
        assert!(events.iter().all(|(n, _)| n != "error"), "{events:?}");
    }
}

/// One fault drill: a stream of session `fault-<kind>` is read at once by its NDJSON
/// requester, an SSE resumer, a legacy Socket.IO client in the session room and an HTTP
/// session follower, while healthy streams run on every transport. Every subscriber of
/// the faulty stream sees the same events ending in `error {error_type}` +
/// `end {reason}` (the legacy client: its `error` event), and the healthy ones complete.
async fn fault_drill(path: &str, body: Value, error_type: &str, reason: &str) -> Vec<Value> {
    let up = start_upstream().await;
    let mut c = config();
    c.flags_dir = flags_dir(FAULT_FLAGS);
    // Long enough that a healthy upstream never looks silent on a loaded CI machine.
    c.engine.idle_timeout_secs = 3;
    let s = Server::start_with(c, fault_routes(&up.base)).await;
    let session = body["session_id"].as_str().unwrap().to_string();
    let request_id = body["request_id"].as_str().unwrap().to_string();
    let route = if path == CHAT { "chat" } else { "up" };
    let engine = if route == "chat" { "script" } else { "ndjson" };
    let errors_before = engine_errors(&s, route, engine).await;

    let mut follower =
        LineReader::open(http().get(s.url(&format!("/api/sessions/{session}/events")))).await;
    let mut spec = sio_spec(
        &s,
        &["websocket"],
        json!([{"wait_for": "error", "count": 1, "timeout_ms": 25000}, {"sleep_ms": 300}]),
    );
    spec["auth"] = json!({"session_id": session});
    let mut legacy = Sio::spawn(Client::Node, spec);
    legacy.expect_type("connect").await;
    let healthy = Healthy::start(&s).await;

    let t0 = Instant::now();
    let resp = http().post(s.url(path)).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let sse = http()
        .get(s.url(&format!("/api/streams/{request_id}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let events = parse_ndjson(&body_text(resp).await);
    let elapsed = t0.elapsed();

    // The requester: the stream rules hold, and it ends with the fault.
    check_rules(&events);
    let n = events.len();
    assert_eq!(events[n - 2]["event"], "error", "{events:?}");
    assert_eq!(
        events[n - 2]["data"]["error_type"],
        error_type,
        "{events:?}"
    );
    assert!(
        events[n - 2]["data"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(events[n - 1]["data"]["reason"], reason, "{events:?}");
    assert!(events.iter().all(|e| e["event"] != "completion"));
    // The SSE resumer and the session follower: the very same events.
    assert_eq!(sse_envelopes(&body_text(sse).await), events, "SSE");
    let followed = follower
        .until(|v| v["request_id"] == request_id.as_str() && v["event"] == "end")
        .await;
    assert_eq!(
        of_stream(&followed, &request_id),
        events,
        "session follower"
    );
    // The legacy client: every chunk, then one `error` with the fault's type, and nothing
    // after it (its vocabulary maps no `end`).
    let (lines, code) = legacy.finish().await;
    assert_eq!(code, 0, "{lines:?}");
    let legacy_events = events_of(&lines);
    let chunks: Vec<Value> = legacy_events
        .iter()
        .filter(|(n, _)| n == "chat_chunk")
        .map(|(_, d)| d["chunk"].clone())
        .collect();
    let want: Vec<Value> = events
        .iter()
        .filter(|e| e["event"] == "chunk")
        .map(|e| e["data"]["text"].clone())
        .collect();
    assert_eq!(chunks, want, "legacy chunks: {legacy_events:?}");
    let (last, data) = legacy_events.last().unwrap();
    assert_eq!(last, "error", "{legacy_events:?}");
    assert_eq!(data["error_type"], error_type);
    assert_eq!(data["session_id"], session.as_str());
    assert_eq!(
        legacy_events.iter().filter(|(n, _)| n == "error").count(),
        1
    );

    healthy.check().await;
    let hub = s.bridge.hub().clone();
    eventually("every stream has ended", || hub.running() == 0).await;
    // Only a failure counts as an engine error (a timeout is the bridge's own verdict).
    let want_errors = errors_before + if reason == "error" { 1.0 } else { 0.0 };
    assert_eq!(engine_errors(&s, route, engine).await, want_errors);
    if body["fault"] == "stall" {
        let closed = *up.closed.lock().unwrap();
        assert!(
            closed.is_some(),
            "the bridge hung up on the stalled upstream"
        );
        assert!(
            elapsed >= Duration::from_millis(2900) && elapsed < Duration::from_secs(15),
            "a stall ends after engine.idle_timeout_secs (3 s): {elapsed:?}"
        );
    }
    s.shutdown().await;
    events
}

#[tokio::test]
async fn an_engine_error_mid_stream_ends_every_subscriber_and_nothing_else() {
    let events = fault_drill(
        "/up",
        json!({"request_id": "fault-error", "session_id": "fault-error", "fault": "error"}),
        "upstream_error",
        "error",
    )
    .await;
    let chunks: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "chunk")
        .map(|e| e["data"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(chunks, ["u0 ", "u1 ", "u2 "]);
}

#[tokio::test]
async fn a_stalled_engine_times_out_on_every_subscriber_and_nothing_else() {
    let events = fault_drill(
        "/up",
        json!({"request_id": "fault-stall", "session_id": "fault-stall", "fault": "stall"}),
        "timeout",
        "timeout",
    )
    .await;
    assert_eq!(events.iter().filter(|e| e["event"] == "chunk").count(), 3);
}

#[tokio::test]
async fn a_panicking_engine_ends_every_subscriber_and_nothing_else() {
    let events = fault_drill(
        CHAT,
        json!({"request_id": "fault-panic", "session_id": "fault-panic",
               "options": {"chunks": 10, "interval_ms": 20, "panic_after": 4}}),
        "engine_error",
        "error",
    )
    .await;
    assert_eq!(events.iter().filter(|e| e["event"] == "chunk").count(), 4);
}

/// The engine's first poll runs in the request's own task (so the first chunk leaves with
/// the response head): a panic there must end that stream alone, like a later one.
#[tokio::test]
async fn an_engine_that_panics_in_its_first_poll_ends_its_stream_alone() {
    let up = start_upstream().await;
    let mut c = config();
    c.flags_dir = flags_dir(FAULT_FLAGS);
    let s = Server::start_with(c, fault_routes(&up.base)).await;
    let events = post_ndjson(
        &s.url(CHAT),
        &json!({"options": {"chunks": 3, "panic_after": 0}}),
    )
    .await;
    check_rules(&events);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["status_update", "error", "end"], "{events:?}");
    assert_eq!(events[1]["data"]["error_type"], "engine_error");
    assert_eq!(events[2]["data"]["reason"], "error");
    // The bridge goes on serving.
    let events = post_ndjson(&s.url(CHAT), &json!({"options": {"chunks": 3}})).await;
    check_rules(&events);
    assert_eq!(events.iter().filter(|e| e["event"] == "chunk").count(), 3);
    assert_eq!(events.last().unwrap()["data"]["reason"], "completed");
    s.shutdown().await;
}

#[tokio::test]
async fn the_panic_drill_is_refused_where_the_route_does_not_enable_it() {
    let s = Server::default().await;
    let r = http()
        .post(s.url(CHAT))
        .json(&json!({"options": {"chunks": 3, "panic_after": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["error_type"], "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("panic_after"),
        "{body}"
    );
    assert_eq!(s.bridge.hub().held(), 0);
    s.shutdown().await;
}

/// Gaps between consecutive arrivals: (p99, max).
fn gaps(arrivals: &[Instant]) -> (Duration, Duration) {
    let mut g: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    g.sort();
    let p99 = g[(g.len() * 99 / 100).min(g.len() - 1)];
    (p99, *g.last().unwrap())
}

#[tokio::test]
async fn stalled_readers_on_both_transports_end_alone_and_fast_readers_keep_their_pace() {
    // 300 chunks of 32 KiB, one every 20 ms: 9.6 MiB in 6 s, more than the kernel
    // buffers of a stalled loopback connection (4 MiB send buffer here) and a 16-packet
    // socket queue hold, so the stalled socket falls `max_lag_bytes` behind and, a second
    // later, is cut (the log holds the whole stream: nobody else is held back).
    const CHUNKS: u64 = 300;
    const BYTES: u64 = 32 * 1024;
    let mut c = bulk_config();
    c.limits.max_lag_bytes = 64 * 1024;
    c.limits.slow_consumer_secs = 1;
    c.limits.socketio_buffer = 16;
    c.replay.max_bytes = 64 << 20;
    let s = Server::start(c).await;
    let session = "slow-1";
    let request_id = "slow-1";

    // Fast readers: an HTTP session follower (its arrival times are measured) and a real
    // legacy client in the session room.
    let mut follower =
        LineReader::open(http().get(s.url(&format!("/api/sessions/{session}/events")))).await;
    let mut spec = sio_spec(
        &s,
        &["websocket"],
        json!([{"wait_for": "chat_complete", "count": 1, "timeout_ms": 40000}]),
    );
    spec["auth"] = json!({"session_id": session});
    spec["global_timeout_ms"] = json!(60000);
    let mut node = Sio::spawn(Client::Node, spec);
    node.expect_type("connect").await;

    // The requester is a Socket.IO client that stops reading once its request is acked.
    let mut stalled = Lean::connect(s.addr, json!({}), Some(4096)).await;
    let ack = stalled
        .emit(
            "chat_message",
            json!({"message": "x", "session_id": session, "request_id": request_id,
                   "options": {"chunks": CHUNKS, "chunk_bytes": BYTES, "interval_ms": 20}}),
        )
        .await;
    loop {
        let (name, data) = stalled.next_within(WAIT).await.expect("the ack");
        if name == format!("ack:{ack}") {
            assert_eq!(data["request_id"], request_id, "{data}");
            break;
        }
    }
    // An HTTP resumer of the same stream that never reads its body.
    let stalled_http = http()
        .get(s.url(&format!("/api/streams/{request_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stalled_http.status(), 200);

    // The follower gets every event as it is produced.
    let mut arrivals = Vec::new();
    let mut followed = Vec::new();
    loop {
        let v = follower
            .next()
            .await
            .expect("the follower's stream goes on");
        if v["event"] == "heartbeat" {
            continue;
        }
        if v["event"] == "chunk" {
            arrivals.push(Instant::now());
        }
        let end = v["event"] == "end";
        followed.push(v);
        if end {
            break;
        }
    }
    let evs = of_stream(&followed, request_id);
    assert_eq!(check_rules(&evs).len() as u64, CHUNKS);
    assert_eq!(evs.last().unwrap()["data"]["reason"], "completed");
    // The last chunk may share its write with the completion, whose 9.6 MiB `output`
    // takes a while to build in a debug build: the gaps stop one chunk before it.
    let (p99, max) = gaps(&arrivals[..arrivals.len() - 1]);
    assert!(
        p99 < Duration::from_secs(1) && max < Duration::from_secs(3),
        "a fast reader keeps its pace beside stalled ones (chunks every 20 ms): p99 gap {p99:?}, max {max:?}"
    );
    let (lines, code) = node.finish().await;
    assert_eq!(code, 0, "the fast legacy client completes");
    let legacy = events_of(&lines);
    assert_eq!(
        legacy.iter().filter(|(n, _)| n == "chat_chunk").count() as u64,
        CHUNKS,
        "the fast legacy client gets every chunk"
    );

    // Now the stalled readers read again: each has an unbroken prefix, then either the
    // rest or its own `slow_consumer` end.
    let text = body_text(stalled_http).await;
    let http_events = parse_ndjson(&text);
    for (i, e) in http_events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "contiguous up to the cut");
    }
    let last = http_events.last().unwrap();
    assert!(
        last["data"]["reason"] == "completed" || last["data"]["reason"] == "slow_consumer",
        "{}",
        last["event"]
    );
    if last["data"]["reason"] == "completed" {
        assert!(
            http_events == evs,
            "the stalled HTTP reader got every event"
        );
    } else {
        assert_eq!(
            http_events[http_events.len() - 2]["data"]["error_type"],
            "slow_consumer"
        );
    }

    let mut chunks = 0u64;
    let mut terminal = None;
    while let Some((name, data)) = stalled.next_within(WAIT).await {
        match name.as_str() {
            "chat_chunk" => {
                assert_eq!(
                    data["chunk"],
                    switchyard::engine::script::generated_chunk(chunks, BYTES),
                    "chunk {chunks} in order, none missing"
                );
                chunks += 1;
            }
            "chat_complete" => {
                let text = data["full_response"].as_str().unwrap_or_default();
                assert_eq!(text.len() as u64, CHUNKS * BYTES);
                terminal = Some((name, json!({})));
                break;
            }
            "error" => {
                terminal = Some((name, data));
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let (name, data) = terminal.unwrap_or_else(|| {
        panic!("the stalled socket got {chunks} chunks and then neither the rest nor a slow_consumer error")
    });
    assert_eq!(
        (name.as_str(), &data["error_type"]),
        ("error", &json!("slow_consumer")),
        "the stalled socket is cut off after {chunks} chunks"
    );
    assert!(chunks < CHUNKS, "cut before the end: {chunks}");
    eprintln!(
        "stalled socket: {chunks} chunks, then slow_consumer; stalled HTTP reader: {} events, then {}; fast follower: p99 gap {p99:?}, max {max:?}",
        http_events.len(),
        last["data"]["reason"]
    );
    let hub = s.bridge.hub().clone();
    eventually("the stream ended", || hub.running() == 0).await;
    s.shutdown().await;
}

/// Stays connected, as a real client does, until the server closes the connection.
fn linger(mut c: Lean) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            while c.next().await.is_some() {}
        })
        .await;
    });
}

/// How one client saw its stream end.
#[derive(Debug)]
struct Outcome {
    what: String,
    chunks: u64,
    /// The end reason (legacy clients, which get no `end`: `completed` when the
    /// completion is `complete`, else the completion's own verdict below).
    reason: String,
    /// The completion's `output` equals the chunks the client received.
    output_matches: bool,
    ended: Instant,
}

/// The shipped `agent` route speaks the neutral vocabulary over Socket.IO:
/// `chat_service {taskName, taskData: {messages, options}}`.
async fn lean_agent_stream(
    mut c: Lean,
    what: String,
    options: Value,
    first: mpsc::UnboundedSender<()>,
) -> Outcome {
    c.emit(
        "chat_service",
        json!({"taskName": "t", "taskData": {"messages": [{"role": "user", "content": "x"}], "options": options}}),
    )
    .await;
    let mut chunks = 0;
    let mut text = String::new();
    let mut output = None;
    while let Some((name, data)) = c.next_within(WAIT).await {
        match name.as_str() {
            "chunk" => {
                if chunks == 0 {
                    let _ = first.send(());
                }
                chunks += 1;
                text.push_str(data["data"]["text"].as_str().unwrap());
            }
            "completion" => output = data["data"]["output"].as_str().map(str::to_string),
            "end" => {
                linger(c);
                return Outcome {
                    what,
                    chunks,
                    reason: data["data"]["reason"].as_str().unwrap().to_string(),
                    output_matches: output.as_deref() == Some(text.as_str()),
                    ended: Instant::now(),
                };
            }
            _ => {}
        }
    }
    Outcome {
        what,
        chunks,
        reason: "connection closed before the end".into(),
        output_matches: false,
        ended: Instant::now(),
    }
}

/// An NDJSON or SSE request read to its end.
async fn http_stream(
    base: String,
    sse: bool,
    what: String,
    options: Value,
    first: mpsc::UnboundedSender<()>,
) -> Outcome {
    let mut req = http()
        .post(format!("{base}{CHAT}"))
        .json(&json!({"options": options}));
    if sse {
        req = req.header("accept", "text/event-stream");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut raw = Vec::new();
    let mut signalled = false;
    while let Some(Ok(b)) = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut body))
        .await
        .expect("the body goes on")
    {
        raw.extend_from_slice(&b);
        if !signalled && String::from_utf8_lossy(&raw).contains("chunk") {
            signalled = true;
            let _ = first.send(());
        }
    }
    let text = String::from_utf8(raw).unwrap();
    let events = if sse {
        sse_envelopes(&text)
    } else {
        parse_ndjson(&text)
    };
    let chunks = check_rules(&events);
    let n = events.len();
    Outcome {
        what,
        chunks: chunks.len() as u64,
        reason: events[n - 1]["data"]["reason"]
            .as_str()
            .unwrap()
            .to_string(),
        output_matches: events[n - 2]["event"] == "completion"
            && events[n - 2]["data"]["output"] == chunks.concat(),
        ended: Instant::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_ends_every_stream_on_every_transport_and_exits_zero() {
    const GRACE: u64 = 3;
    let mut bridge = Spawn::new()
        .env("SWITCHYARD_SHUTDOWN__GRACE_SECS", GRACE)
        .start()
        .await;
    let base = bridge.base();
    let sock_addr = bridge.addr;
    // Long streams outlive the grace time; short ones (2 s) finish within it.
    let long = json!({"chunks": 100000, "interval_ms": 50});
    let short = json!({"chunks": 40, "interval_ms": 50});

    // Real legacy clients first (they take longest to start): Node over WebSocket and
    // over polling, python-socketio over polling, all on the legacy `chat` vocabulary.
    let legacy_steps = json!([
        {"emit": "chat_message", "data": {"message": "x", "options": long}, "ack": true},
        {"wait_for": "chat_complete", "count": 1, "timeout_ms": 40000}
    ]);
    let spec = |transport: &str| json!({"url": base, "transports": [transport], "steps": legacy_steps, "global_timeout_ms": 50000});
    let mut legacy = vec![
        (
            "node websocket",
            Sio::spawn(Client::Node, spec("websocket")),
        ),
        ("node polling", Sio::spawn(Client::Node, spec("polling"))),
        (
            "python polling",
            Sio::spawn(Client::Python, spec("polling")),
        ),
    ];
    for (_, c) in &mut legacy {
        c.expect_event("chat_chunk").await;
    }

    // 100 more: 35 NDJSON, 25 SSE, 20 lean WebSocket and 20 lean polling Socket.IO
    // clients, a quarter of each short.
    let (first_tx, mut first_rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0;
    for (kind, count) in [("ndjson", 35), ("sse", 25), ("ws", 20), ("polling", 20)] {
        for i in 0..count {
            let opts = if i % 4 == 0 { &short } else { &long };
            let what = format!(
                "{kind} #{i} ({})",
                if i % 4 == 0 { "short" } else { "long" }
            );
            let (first, opts, base) = (first_tx.clone(), opts.clone(), base.clone());
            n += 1;
            match kind {
                "ndjson" | "sse" => {
                    tasks.spawn(http_stream(base, kind == "sse", what, opts, first));
                }
                "ws" => {
                    tasks.spawn(async move {
                        let c = Lean::connect(sock_addr, json!({}), None).await;
                        lean_agent_stream(c, what, opts, first).await
                    });
                }
                _ => {
                    tasks.spawn(async move {
                        // Half of them pause 250 ms before each poll.
                        let gap = Duration::from_millis(if i % 2 == 0 { 250 } else { 0 });
                        let c = Lean::polling(sock_addr, json!({}), gap).await;
                        lean_agent_stream(c, what, opts, first).await
                    });
                }
            }
        }
    }
    for _ in 0..n {
        tokio::time::timeout(WAIT, first_rx.recv())
            .await
            .expect("every stream is live before SIGTERM");
    }

    let sigterm = Instant::now();
    bridge.sigterm();

    let mut outcomes = Vec::new();
    while let Some(o) = tasks.join_next().await {
        outcomes.push(o.unwrap());
    }
    for o in &outcomes {
        let short = o.what.contains("short");
        let want = if short { "completed" } else { "shutdown" };
        assert_eq!(o.reason, want, "{o:?}");
        assert!(
            o.output_matches,
            "the completion carries every chunk received: {o:?}"
        );
        if short {
            assert_eq!(o.chunks, 40, "{o:?}");
        }
    }
    assert!(
        outcomes
            .iter()
            .any(|o| o.what.contains("short") && o.ended > sigterm),
        "short streams finish during the grace time"
    );
    for (what, c) in legacy {
        let (lines, code) = c.finish().await;
        assert_eq!(code, 0, "{what}: {lines:?}");
        let events = events_of(&lines);
        let text: String = events
            .iter()
            .filter(|(n, _)| n == "chat_chunk")
            .map(|(_, d)| d["chunk"].as_str().unwrap())
            .collect();
        let complete: Vec<&Value> = events
            .iter()
            .filter(|(n, _)| n == "chat_complete")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(complete.len(), 1, "{what}: {events:?}");
        assert_eq!(
            complete[0]["full_response"], text,
            "{what}: the legacy client hears the shutdown through its completion, with every chunk"
        );
    }

    let exit = bridge.exit_within(Duration::from_secs(GRACE + 15)).await;
    let took = sigterm.elapsed();
    assert_eq!(exit.code(), Some(0));
    assert!(
        took < Duration::from_secs(GRACE + 5),
        "exits within shutdown.grace_secs ({GRACE} s) and a small margin: {took:?}"
    );
    eprintln!(
        "SIGTERM with {} live streams: exit 0 after {took:?}",
        outcomes.len() + 3
    );
}

/// A small deterministic pseudo-random sequence (xorshift64*), so a failing run repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Vanish {
    /// Drops the NDJSON response body after `n` lines.
    Ndjson,
    /// Drops the SSE response body after `n` frames.
    Sse,
    /// Closes (or just drops) its WebSocket after `n` events.
    Ws,
    /// Stops polling after `n` events, without a word.
    Poll,
}

/// One short stream (20 chunks, 5 ms apart) whose client vanishes after `cut` events.
async fn vanishing_client(
    http: reqwest::Client,
    base: String,
    addr: std::net::SocketAddr,
    kind: Vanish,
    cut: u64,
) {
    let options = json!({"chunks": 20, "interval_ms": 5});
    let run = async {
        match kind {
            Vanish::Ndjson | Vanish::Sse => {
                let mut req = http
                    .post(format!("{base}{CHAT}"))
                    .json(&json!({"options": options}));
                let sep: &[u8] = if kind == Vanish::Sse {
                    req = req.header("accept", "text/event-stream");
                    b"\n\n"
                } else {
                    b"\n"
                };
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status(), 200);
                let mut body = resp.bytes_stream();
                let mut seen = 0u64;
                while seen < cut {
                    let Some(Ok(bytes)) = futures_util::StreamExt::next(&mut body).await else {
                        break;
                    };
                    seen += bytes.windows(sep.len()).filter(|w| *w == sep).count() as u64;
                }
                // Dropping the body here closes the connection mid-stream.
            }
            Vanish::Ws => {
                let mut c = Lean::connect(addr, json!({}), None).await;
                c.emit("chat_message", json!({"message": "x", "options": options}))
                    .await;
                for _ in 0..cut {
                    match c.next().await {
                        Some((name, _)) if name == "chat_complete" => break,
                        Some(_) => {}
                        None => break,
                    }
                }
                if cut.is_multiple_of(2) {
                    c.close().await;
                }
            }
            Vanish::Poll => {
                let mut c = Lean::polling(addr, json!({}), Duration::ZERO).await;
                c.emit("chat_message", json!({"message": "x", "options": options}))
                    .await;
                for _ in 0..cut {
                    match c.next().await {
                        Some((name, _)) if name == "chat_complete" => break,
                        Some(_) => {}
                        None => break,
                    }
                }
            }
        }
    };
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("a {kind:?} client stuck before vanishing"));
}

/// Runs `n` vanishing clients, `concurrency` at a time: 2 % stop polling, 4 % drop their
/// WebSocket, the rest drop an NDJSON (3 in 4) or SSE response, each at a random event.
async fn churn(base: &str, addr: std::net::SocketAddr, n: usize, seed: u64) {
    let concurrency = 150;
    let http = reqwest::Client::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut rng = Rng(seed);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let slot = slots.clone().acquire_owned().await.unwrap();
        let r = rng.next();
        let kind = match i % 50 {
            0 => Vanish::Poll,
            1 | 2 => Vanish::Ws,
            _ if r.is_multiple_of(4) => Vanish::Sse,
            _ => Vanish::Ndjson,
        };
        // A stream is 23 events; a cut past that reads it whole.
        let cut = (r >> 16) % 25;
        let (http, base) = (http.clone(), base.to_string());
        tasks.spawn(async move {
            vanishing_client(http, base, addr, kind, cut).await;
            drop(slot);
        });
        while let Some(done) = tasks.try_join_next() {
            done.unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_vanishing_clients_leave_no_stream_task_or_memory_behind() {
    // The real binary, so its memory and tasks are its own. Streams end 0 s after their
    // last subscriber left and are kept 1 s for resume; a client that stops polling
    // misses a ping within 1 s and is dropped 1 s later.
    let mut bridge = Spawn::new()
        .env("SWITCHYARD_REPLAY__ORPHAN_GRACE_SECS", 0)
        .env("SWITCHYARD_REPLAY__RETENTION_SECS", 1)
        .env("SWITCHYARD_LIMITS__SOCKETIO_PING_INTERVAL_SECS", 1)
        .env("SWITCHYARD_LIMITS__SOCKETIO_PING_TIMEOUT_SECS", 1)
        .start()
        .await;
    let pid = bridge.pid;
    let base = bridge.base();
    let sock_addr = bridge.addr;
    let scraper = reqwest::Client::new();

    // Warm up (allocator arenas, pools, lazy statics), then take the baseline.
    churn(&base, sock_addr, 1000, 7).await;
    let before = settle(&scraper, &base).await;
    let rss_before = rss(pid);

    let t0 = Instant::now();
    churn(&base, sock_addr, 10_000, 42).await;
    let churned = t0.elapsed();
    let after = settle(&scraper, &base).await;
    let rss_after = rss(pid);
    eprintln!(
        "10 000 vanishing clients in {churned:?}; tasks {} -> {}; RSS {} -> {} MiB; ends {:?}",
        before.tasks,
        after.tasks,
        rss_before >> 20,
        rss_after >> 20,
        after.ended
    );

    // (a) The hub is empty (`settle` waited for it), and every stream that started has
    // ended: cancelled when its client vanished, completed when it read to the end.
    let started = after.started - before.started;
    assert_eq!(started, 10_000.0);
    let ended = |c: &Census, r: &str| c.ended(r);
    let cancelled = ended(&after, "cancelled") - ended(&before, "cancelled");
    let completed = ended(&after, "completed") - ended(&before, "completed");
    assert_eq!(cancelled + completed, started, "{:?}", after.ended);
    assert!(
        cancelled > 1000.0,
        "vanished clients cancel their streams: {cancelled}"
    );
    for r in ["error", "timeout", "slow_consumer", "shutdown", "rejected"] {
        assert_eq!(
            ended(&after, r),
            ended(&before, r),
            "no stream ended with {r}"
        );
    }
    // (b) No task left behind: back to the warm baseline (a few may belong to the
    // scraper's own connection or a timer in flight).
    assert!(
        after.tasks <= before.tasks + 8.0,
        "tasks alive: {} before, {} after",
        before.tasks,
        after.tasks
    );
    // (c) Memory back near its baseline: what 10 000 streams of ~1 KiB events would leak
    // is over 64 MiB; the allocator may keep some freed pages, hence the slack.
    assert!(
        rss_after < rss_before + (64 << 20),
        "RSS {} MiB before, {} MiB after",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        churned < Duration::from_secs(60),
        "the churn took {churned:?}"
    );

    bridge.sigterm();
    let exit = bridge.exit_within(Duration::from_secs(20)).await;
    assert_eq!(exit.code(), Some(0));
}
