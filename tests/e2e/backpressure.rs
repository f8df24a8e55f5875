//! Slow consumers and bursts (SPEC section 4): a subscriber that keeps reading gets every
//! event whatever the engine's bursts; one that stops reading is cut alone after
//! `limits.slow_consumer_secs`, and holds back neither the engine nor the other
//! subscribers longer than that.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

/// Reads a whole NDJSON (or SSE) response as fast as the client can.
async fn read_all(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200);
    String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap()
}

fn assert_completed(events: &[Value], chunks: usize, what: &str) {
    let last = events.last().unwrap_or_else(|| panic!("{what}: no events"));
    assert_eq!(
        last["data"]["reason"],
        "completed",
        "{what}: ended with {last} after {} events",
        events.len()
    );
    assert_eq!(check_rules(events).len(), chunks, "{what}");
}

/// Bursts produced at once, far larger than `limits.max_lag_bytes` (1 MiB) and, for the
/// last, than `replay.max_bytes` (8 MiB): a client reading at full speed gets them whole,
/// on NDJSON and on SSE, with the shipped lag and replay limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_speed_reader_gets_every_burst_whole() {
    let s = Server::start(bulk_config()).await;
    for chunks in [40usize, 160] {
        let body = json!({"options": {"chunks": chunks, "chunk_bytes": 65536}});
        let text = read_all(http().post(s.url(CHAT)).json(&body).send().await.unwrap()).await;
        assert_completed(
            &parse_ndjson(&text),
            chunks,
            &format!("NDJSON {chunks} x 64 KiB"),
        );
        let resp = http()
            .post(s.url(CHAT))
            .header("accept", "text/event-stream")
            .json(&body)
            .send()
            .await
            .unwrap();
        let frames = parse_sse(&read_all(resp).await);
        let events: Vec<Value> = frames
            .iter()
            .filter(|f| f.event.is_some() && f.event.as_deref() != Some("heartbeat"))
            .map(|f| json!({"event": f.event, "seq": f.id.as_deref().and_then(|i| i.parse::<u64>().ok()), "data": f.data}))
            .collect();
        assert_completed(&events, chunks, &format!("SSE {chunks} x 64 KiB"));
    }
    s.shutdown().await;
}

/// A replay buffer far smaller than the stream (16 KiB for 400 events): the engine's
/// bursts wait for the reader instead of evicting what it has not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_replay_buffer_paces_the_engine_instead_of_cutting_the_reader() {
    let mut c = config();
    c.replay.max_bytes = 16 * 1024;
    c.limits.max_lag_bytes = 4 * 1024;
    let s = Server::start(c).await;
    for _ in 0..20 {
        let events = post_ndjson(&s.url(CHAT), &json!({"options": {"chunks": 400}})).await;
        assert_completed(&events, 400, "400 chunks through a 16 KiB log");
    }
    s.shutdown().await;
}

/// A legacy socket in the session room of a 10 MiB burst started over HTTP reads at
/// loopback speed: it gets every chunk, as does the requester.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_member_at_loopback_speed_gets_a_burst_started_over_http() {
    const CHUNKS: usize = 160;
    let s = Server::start(bulk_config()).await;
    let session = "burst-room";
    let mut spec = sio_spec(
        &s,
        &["websocket"],
        json!([{"wait_any": ["chat_complete", "error"], "count": 1, "timeout_ms": 60000}]),
    );
    spec["auth"] = json!({"session_id": session});
    spec["global_timeout_ms"] = json!(90000);
    let mut node = Sio::spawn(Client::Node, spec);
    node.expect_type("connect").await;
    let body = json!({"session_id": session, "options": {"chunks": CHUNKS, "chunk_bytes": 65536}});
    let text = read_all(http().post(s.url(CHAT)).json(&body).send().await.unwrap()).await;
    assert_completed(&parse_ndjson(&text), CHUNKS, "the HTTP requester");
    let (lines, code) = node.finish().await;
    let legacy = events_of(&lines);
    let chunks = legacy.iter().filter(|(n, _)| n == "chat_chunk").count();
    let errors: Vec<&Value> = legacy
        .iter()
        .filter(|(n, _)| n == "error")
        .map(|(_, d)| d)
        .collect();
    assert!(
        errors.is_empty(),
        "the room member was cut: {errors:?} after {chunks} chunks"
    );
    assert_eq!(code, 0);
    assert_eq!(chunks, CHUNKS, "the room member gets every chunk");
    s.shutdown().await;
}

/// A reader that stops reading while the stream outgrows the log: the engine waits for it
/// `slow_consumer_secs` (1 s here), then the stalled reader alone is cut and the engine and
/// a fast follower of the same stream go on to the end. The stalled reader, reading again,
/// gets an unbroken prefix and its own `slow_consumer` end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_holds_the_stream_back_no_longer_than_slow_consumer_secs() {
    const CHUNKS: usize = 2000;
    const BYTES: usize = 16 * 1024; // 32 MiB in all: more than any kernel buffers hold
    let mut c = bulk_config();
    c.replay.max_bytes = 1 << 20;
    c.limits.max_lag_bytes = 256 * 1024;
    c.limits.slow_consumer_secs = 1;
    let s = Server::start(c).await;
    let session = "stall-1";
    let mut follower =
        LineReader::open(http().get(s.url(&format!("/api/sessions/{session}/events")))).await;
    let stalled = http()
        .post(s.url(CHAT))
        .json(&json!({"session_id": session, "request_id": "stall-1",
                       "options": {"chunks": CHUNKS, "chunk_bytes": BYTES}}))
        .send()
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    let started = Instant::now();
    let mut arrivals = Vec::new();
    let mut followed = Vec::new();
    loop {
        let v = follower
            .next()
            .await
            .expect("the follower's stream goes on");
        if v["event"] == "chunk" {
            arrivals.push(Instant::now());
        }
        let end = v["event"] == "end";
        followed.push(v);
        if end {
            break;
        }
    }
    let took = started.elapsed();
    assert_completed(&followed, CHUNKS, "the fast follower");
    let longest = arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest < Duration::from_secs(5),
        "the stalled reader held the follower back {longest:?} (slow_consumer_secs = 1)"
    );
    let hub = s.bridge.hub().clone();
    eventually("the stream ended", || hub.running() == 0).await;

    let events = parse_ndjson(&read_all(stalled).await);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "contiguous up to the cut");
    }
    let n = events.len();
    assert!(
        (2..CHUNKS).contains(&n),
        "the stalled reader is cut: {n} events"
    );
    assert_eq!(events[n - 2]["data"]["error_type"], "slow_consumer");
    assert_eq!(events[n - 1]["data"]["reason"], "slow_consumer");
    eprintln!(
        "follower: {CHUNKS} chunks in {took:?}, longest gap {longest:?}; stalled reader cut after {} events",
        n - 2
    );
    s.shutdown().await;
}
