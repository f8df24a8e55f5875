//! The HTTP adapter: NDJSON and SSE streams, the pre-stream errors, resume and cancel.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn ndjson_streams_the_words_under_the_stream_rules() {
    let s = Server::default().await;
    let resp = http()
        .post(s.url(CHAT))
        .json(&chat_body("hello  brave new\nworld"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/x-ndjson");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    let id = h["x-request-id"].to_str().unwrap().to_string();
    let events = parse_ndjson(&resp.text().await.unwrap());
    let chunks = check_rules(&events);
    assert_eq!(chunks, ["hello ", "brave ", "new ", "world"]);
    assert_eq!(events[0]["data"]["metadata"]["request_id"], id.as_str());
    assert_eq!(events[0]["data"]["metadata"]["route"], "chat");
    assert_eq!(events.last().unwrap()["data"]["reason"], "completed");
    assert_eq!(events[events.len() - 2]["data"]["status"], "complete");
    s.shutdown().await;
}

#[tokio::test]
async fn sse_frames_with_ids_and_heartbeats_without() {
    let mut c = config();
    c.heartbeat_secs = 1;
    let s = Server::start(c).await;
    let body = json!({"request_id": "sse-1", "options": {"chunks": 2, "interval_ms": 1500}});
    let resp = http()
        .post(s.url(CHAT))
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-request-id"], "sse-1");
    let frames = parse_sse(&resp.text().await.unwrap());
    let hb: Vec<&SseFrame> = frames
        .iter()
        .filter(|f| f.event.as_deref() == Some("heartbeat"))
        .collect();
    assert!(
        !hb.is_empty(),
        "a 1.5 s gap with heartbeat_secs = 1 has a heartbeat: {frames:?}"
    );
    assert!(
        hb.iter()
            .all(|f| f.id.is_none() && f.data.as_ref().unwrap()["timestamp"].is_u64())
    );
    let events: Vec<Value> = frames
        .iter()
        .filter(|f| f.event.as_deref() != Some("heartbeat"))
        .map(|f| {
            assert_eq!(f.id.as_deref().unwrap().parse::<u64>().unwrap().to_string(), *f.id.as_ref().unwrap());
            json!({"event": f.event, "seq": f.id.as_ref().unwrap().parse::<u64>().unwrap(), "data": f.data})
        })
        .collect();
    assert_eq!(
        check_rules(&events),
        ["abcdefghijklmnop", "bcdefghijklmnopq"]
    );
    s.shutdown().await;
}

#[tokio::test]
async fn every_pre_stream_error_has_its_status_and_type() {
    let mut c = config();
    c.limits.max_body_bytes = 1000;
    c.limits.max_streams = 2;
    c.replay.max_bytes = 2000;
    let s = Server::start(c).await;
    let post = |path: &str| http().post(s.url(path));
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (post(CHAT).body("{not json"), 400, "invalid_request"),
        (post(CHAT).body("[1, 2]"), 400, "invalid_request"),
        (
            post(CHAT).json(&json!({"request_id": 7})),
            400,
            "invalid_request",
        ),
        (
            post(CHAT).json(&json!({"session_id": ["x"]})),
            400,
            "invalid_request",
        ),
        (
            post(CHAT).json(&json!({"options": "fast"})),
            400,
            "invalid_request",
        ),
        (
            post(CHAT).json(&json!({"options": {"chunks": 100001}})),
            400,
            "invalid_request",
        ),
        (
            post(CHAT).json(&json!({"options": {"interval_ms": 60001}})),
            400,
            "invalid_request",
        ),
        (
            post(CHAT).json(&json!({"pad": "x".repeat(2000)})),
            413,
            "payload_too_large",
        ),
        (post("/api/nowhere").json(&json!({})), 404, "unknown_route"),
        (
            http().get(s.url("/api/streams/nope")),
            404,
            "unknown_stream",
        ),
        (post("/api/ai/cancel/nope"), 404, "unknown_stream"),
    ];
    for (req, status, ty) in cases {
        let (got_status, got_ty) = error_of(req.send().await.unwrap()).await;
        assert_eq!((got_status, got_ty.as_str()), (status, ty));
    }
    // The option error names the option.
    let r = post(CHAT)
        .json(&json!({"options": {"tool_calls": 101}}))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("tool_calls"));

    // 409 duplicate: a live stream's request id.
    let slow = json!({"request_id": "live-1", "options": {"chunks": 50, "interval_ms": 100}});
    let mut live = LineReader::open(post(CHAT).json(&slow)).await;
    live.next().await.unwrap();
    let (st, ty) = error_of(post(CHAT).json(&slow).send().await.unwrap()).await;
    assert_eq!((st, ty.as_str()), (409, "duplicate_request"));

    // 429: max_streams = 2.
    let mut other =
        LineReader::open(post(CHAT).json(&json!({"options": {"chunks": 50, "interval_ms": 100}})))
            .await;
    other.next().await.unwrap();
    let (st, ty) = error_of(post(CHAT).json(&chat_body("x")).send().await.unwrap()).await;
    assert_eq!((st, ty.as_str()), (429, "over_capacity"));
    for id in ["live-1", other.headers["x-request-id"].to_str().unwrap()] {
        let r = post(&format!("/api/ai/cancel/{id}")).send().await.unwrap();
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"cancelled": true}));
    }
    live.rest().await;
    other.rest().await;

    // 410: replay.max_bytes = 2000 cannot hold 100 events.
    post_ndjson(
        &s.url(CHAT),
        &json!({"request_id": "big", "options": {"chunks": 100}}),
    )
    .await;
    let (st, ty) = error_of(
        http()
            .get(s.url("/api/streams/big?after=0"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((st, ty.as_str()), (410, "resume_gap"));
    s.shutdown().await;
}

#[tokio::test]
async fn auth_on_needs_a_valid_bearer_token() {
    let mut c = config();
    c.auth.jwt_secret = Some("test-secret".into());
    let s = Server::start(c).await;
    let (st, ty) = error_of(
        http()
            .post(s.url(CHAT))
            .json(&chat_body("hi"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((st, ty.as_str()), (401, "unauthorized"));
    let (st, _) = error_of(
        http()
            .post(s.url(CHAT))
            .bearer_auth(jwt("other-secret", "alice"))
            .json(&chat_body("hi"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 401);
    let resp = http()
        .post(s.url(CHAT))
        .bearer_auth(jwt("test-secret", "alice"))
        .json(&chat_body("hi there"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        check_rules(&parse_ndjson(&resp.text().await.unwrap())),
        ["hi ", "there"]
    );
    s.shutdown().await;
}

pub fn jwt(secret: &str, sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "tenant": "acme", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn resume_replays_exactly_the_missing_events_then_follows() {
    let s = Server::default().await;
    // Finished stream: after=2 gives seq 3.. end.
    let all = post_ndjson(
        &s.url(CHAT),
        &json!({"request_id": "r-done", "messages": [{"role": "user", "content": "a b c d e"}]}),
    )
    .await;
    let replay = parse_ndjson(&get_text(&s.url("/api/streams/r-done?after=2")).await);
    assert_eq!(replay, all[3..].to_vec());
    // No position: from the start.
    let replay = parse_ndjson(&get_text(&s.url("/api/streams/r-done")).await);
    assert_eq!(replay, all);
    // SSE: Last-Event-ID wins over after.
    let text = http()
        .get(s.url("/api/streams/r-done?after=0"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "4")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ids: Vec<u64> = parse_sse(&text)
        .iter()
        .map(|f| f.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (5..all.len() as u64).collect::<Vec<_>>());
    // SSE at the end: 204, so EventSource stops.
    let last = all.len() - 1;
    let r = http()
        .get(s.url(&format!("/api/streams/r-done?after={last}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Garbage position.
    let r = http()
        .get(s.url("/api/streams/r-done?after=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Live stream: a client that dropped after seq 2 resumes and follows to the end.
    let body = json!({"request_id": "r-live", "options": {"chunks": 8, "interval_ms": 50}});
    let mut first = LineReader::open(http().post(s.url(CHAT)).json(&body)).await;
    let head = first.until(|v| v["seq"] == 2).await;
    let mut second = LineReader::open(http().get(s.url("/api/streams/r-live?after=2"))).await;
    let tail = second.rest().await;
    assert_eq!(tail[0]["seq"], 3);
    let mut whole = head.clone();
    whole.extend(tail);
    check_rules(&whole);
    assert_eq!(
        first.rest().await,
        whole[3..].to_vec(),
        "both subscribers see the same events"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn client_gone_cancels_the_engine_work() {
    let s = Server::default().await;
    let mut r = LineReader::open(
        http()
            .post(s.url(CHAT))
            .json(&json!({"options": {"chunks": 1000, "interval_ms": 20}})),
    )
    .await;
    r.until(|v| v["seq"] == 2).await;
    assert_eq!(s.bridge.hub().running(), 1);
    drop(r);
    let hub = s.bridge.hub().clone();
    eventually("the orphaned stream is cancelled", || hub.running() == 0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn an_http_reader_that_stops_longer_than_slow_consumer_secs_is_cut() {
    let mut c = bulk_config();
    c.limits.max_lag_bytes = 64 * 1024;
    c.limits.slow_consumer_secs = 1;
    c.replay.max_bytes = 64 << 20;
    let s = Server::start(c).await;
    // 20 MB burst: far more than socket buffers hold while the reader stalls.
    let body = json!({"options": {"chunks": 20000, "chunk_bytes": 1000}});
    let resp = http().post(s.url(CHAT)).json(&body).send().await.unwrap();
    // The reader stalls until the engine is done (the log holds it all)...
    let hub = s.bridge.hub().clone();
    eventually("the burst is fully produced", || hub.running() == 0).await;
    // ...and then for longer than slow_consumer_secs: the length of the stall is what is
    // tested here, so it is waited out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = parse_ndjson(&resp.text().await.unwrap());
    let last = events.last().unwrap();
    assert_eq!(last["event"], "end");
    assert_eq!(last["data"]["reason"], "slow_consumer");
    let err = &events[events.len() - 2];
    assert_eq!(err["data"]["error_type"], "slow_consumer");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "contiguous up to the cut");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_silent_engine_ends_with_timeout() {
    let mut c = config();
    c.engine.idle_timeout_secs = 1;
    let s = Server::start(c).await;
    let events = post_ndjson(
        &s.url(CHAT),
        &json!({"options": {"chunks": 3, "interval_ms": 2500}}),
    )
    .await;
    check_rules(&events);
    let n = events.len();
    assert_eq!(events[n - 2]["data"]["error_type"], "timeout");
    assert_eq!(events[n - 1]["data"]["reason"], "timeout");
    s.shutdown().await;
}

#[tokio::test]
async fn health_and_readiness_follow_the_lifecycle() {
    let mut s = Server::default().await;
    let (st, body) = {
        let r = http().get(s.url("/healthz")).send().await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!((st.as_u16(), body["status"].as_str()), (200, Some("ok")));
    let r = http().get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["routes"], 3);
    assert_eq!(ready["flags_version"], 1);
    assert_eq!(ready["flags_reload"]["ok"], true);
    // While draining (a live stream keeps the drain going), readiness is refused.
    let mut live = LineReader::open(
        http()
            .post(s.url(CHAT))
            .json(&json!({"options": {"chunks": 1000, "interval_ms": 20}})),
    )
    .await;
    live.until(|v| v["event"] == "chunk").await;
    s.begin_shutdown();
    let bridge = s.bridge.clone();
    eventually("the drain starts", || bridge.is_draining()).await;
    let r = http().get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["error_type"],
        "draining"
    );
    assert_eq!(
        http().get(s.url("/healthz")).send().await.unwrap().status(),
        200
    );
    live.rest().await;
    s.shutdown().await;
}

/// A client written against an older HTTP dialect (`{message, session_id, user_id,
/// metadata}` in, `data:`-only SSE of `content_chunk` ... `complete` out, no `Accept` of its
/// own), served by a routes.toml edit alone.
const LEGACY_SSE_ROUTE: &str = r#"
[[route]]
name = "stream"
engine = { kind = "script" }
[route.http]
path = "/api/v1/chat/stream"
request = { messages = [{ role = "user", content = "$.message" }], session_id = "$.session_id", user_id = "$.user_id", metadata = "$.metadata" }
default_format = "sse"
sse_framing = "data_only"
[route.http.emit]
chunk = { payload = { type = "content_chunk", content = "$.data.text" } }
completion = { payload = { type = "complete", message_id = "$.request_id" } }
error = { payload = { type = "error", error = "$.data.message" } }
"#;

#[tokio::test]
async fn a_legacy_http_dialect_is_configuration_only() {
    let mut c = config();
    c.routes_file = routes_file(LEGACY_SSE_ROUTE);
    c.flags_dir = flags_dir("version = 1\n[route.stream]\nmode = \"new\"\n");
    let s = Server::start(c).await;
    let message = "hello from the app we are moving";
    let body = json!({"message": message, "session_id": "s-legacy", "user_id": "u-7", "metadata": {"source": "web"}});
    // Node's fetch and a ReadableStream reader, parsing `data:` lines as a browser app does.
    let lines = run_node(
        "http_client.js",
        json!({"mode": "stream", "url": s.url("/api/v1/chat/stream"), "body": body}),
    )
    .await;
    let head = &lines[0];
    assert_eq!(head["type"], "response");
    assert_eq!(head["status"], 200, "{lines:?}");
    assert_eq!(head["content_type"], "text/event-stream", "{lines:?}");
    let data: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "data")
        .map(|l| &l["data"])
        .collect();
    let (last, chunks) = data.split_last().unwrap();
    assert!(
        chunks.iter().all(|d| d["type"] == "content_chunk"),
        "{data:?}"
    );
    let text: String = chunks
        .iter()
        .map(|d| d["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, message);
    assert_eq!(
        **last,
        json!({"type": "complete", "message_id": head["request_id"]})
    );
    assert!(head["request_id"].is_string());

    // An explicit Accept still wins: the same dialect, one JSON line each.
    let resp = http()
        .post(s.url("/api/v1/chat/stream"))
        .header("accept", "application/x-ndjson")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let events = parse_ndjson(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap()["type"], "complete");
    assert_eq!(events.len(), chunks.len() + 1);
    s.shutdown().await;
}
