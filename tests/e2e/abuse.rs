//! Bounded under abuse (SPEC section 8): a stream's text, the live streams together and
//! the open connections each stay within a configured bound; an engine nobody reads is
//! paused; the two attacks of a single anonymous client (one huge stream read at full
//! speed, hundreds of huge streams never read) leave memory bounded and well-behaved
//! clients served, against the real binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;
use crate::support::upstream::flood;

/// A stream whose text outgrows `limits.max_output_bytes` ends with its own error, on
/// HTTP and on Socket.IO: never a completion with a cut-short text.
#[tokio::test]
async fn text_past_max_output_bytes_ends_the_stream_with_an_error() {
    let mut c = config();
    c.limits.max_output_bytes = 64 * 1024;
    let s = Server::start(c).await;
    let ask = json!({"options": {"chunks": 1000, "chunk_bytes": 4096}});
    let events = post_ndjson(&s.url(CHAT), &ask).await;
    let n = events.len();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64);
    }
    assert_eq!(n, 1 + 16 + 2, "started, the 16 chunks that fit, error, end");
    assert_eq!(events[n - 2]["event"], "error");
    assert_eq!(events[n - 2]["data"]["error_type"], "output_too_large");
    assert_eq!(events[n - 1]["data"]["reason"], "error");
    assert!(events.iter().all(|e| e["event"] != "completion"));

    let mut node = Sio::spawn(
        Client::Node,
        sio_spec(
            &s,
            &["websocket"],
            json!([
                {"emit": "chat_message", "data": {"message": "x", "options": ask["options"]}, "ack": true},
                {"wait_any": ["error", "chat_complete"], "count": 1}
            ]),
        ),
    );
    let err = node.expect_event("error").await;
    assert_eq!(err["data"]["error_type"], "output_too_large");
    let (lines, _) = node.finish().await;
    assert!(events_of(&lines).iter().all(|(n, _)| n != "chat_complete"));
    s.shutdown().await;
}

/// An NDJSON upstream that writes chunk lines as fast as its connection takes them and
/// counts the bytes the bridge accepted.
async fn flooding_upstream() -> (String, Arc<AtomicU64>) {
    let written = Arc::new(AtomicU64::new(0));
    let text = "x".repeat(1000);
    let line = format!("{}\n", json!({"event": "chunk", "data": {"text": text}}));
    let up = Upstream::start({
        let written = written.clone();
        move |_, _| std::future::ready(flood(line.clone(), written.clone()))
    })
    .await;
    (up.base, written)
}

/// Waits until `written` stops growing for a while (its writer is blocked); returns it.
async fn settled(written: &AtomicU64) -> u64 {
    let deadline = Instant::now() + WAIT;
    let mut last = written.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream never stopped: {now} bytes"
        );
        last = now;
    }
}

/// SPEC 8: an engine whose stream nobody reads is paused, so its upstream connection stops
/// being read (TCP pushes back on the upstream), and it resumes when a subscriber reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_nobody_reads_is_paused_and_its_upstream_pushes_back() {
    let (upstream, written) = flooding_upstream().await;
    let routes = format!(
        "[[route]]\nname = \"up\"\nhttp = \"/up\"\nengine = {{ kind = \"ndjson\", url = \"{upstream}/stream\", retries = 0 }}\n"
    );
    let mut c = config();
    c.routes_file = routes_file(&routes);
    c.flags_dir = flags_dir("version = 1\n[route.up]\nmode = \"dual\"\n");
    c.replay.max_bytes = 1 << 20;
    c.limits.max_lag_bytes = 256 * 1024;
    c.replay.orphan_grace_secs = 60;
    c.limits.max_output_bytes = 1 << 30;
    let s = Server::start(c).await;
    let mut first = LineReader::open(
        http()
            .post(s.url("/up"))
            .json(&json!({"request_id": "flood-1"})),
    )
    .await;
    first.until(|v| v["event"] == "chunk").await;
    // The requester goes: nobody reads the stream any more.
    drop(first);
    let stream = s.bridge.hub().get("flood-1").expect("the stream");
    let hub = s.bridge.hub().clone();
    eventually("the engine pauses", || stream.is_paused()).await;
    let paused_at = settled(&written).await;
    // What the bridge took: its log (1 MiB) and what sits in socket buffers and the
    // upstream reader, not the gigabytes an unpaused engine would have read by now.
    assert!(paused_at < 64 << 20, "the upstream wrote {paused_at} bytes");
    assert_eq!(hub.running(), 1, "paused, not ended");
    // A resumer reads: the engine resumes and the upstream writes again.
    let mut resumer = LineReader::open(http().get(s.url(&format!(
        "/api/streams/flood-1?after={}",
        stream.first_kept()
    ))))
    .await;
    for _ in 0..3000 {
        resumer.next().await.expect("events");
    }
    assert!(
        written.load(Ordering::Relaxed) > paused_at + (1 << 20),
        "the upstream is read again once a subscriber reads"
    );
    drop(resumer);
    assert!(s.bridge.cancel("flood-1").unwrap());
    eventually("the stream ended", || hub.running() == 0).await;
    s.shutdown().await;
}

/// At `limits.max_live_bytes`, new streams are refused with 429 `over_capacity` on both
/// transports, and admitted again once memory is freed.
#[tokio::test]
async fn the_live_budget_refuses_new_streams_until_memory_is_freed() {
    let mut c = config();
    // Less than one 4 KiB chunk costs (its line twice, its text): the hog's first chunk
    // takes it all.
    c.limits.max_live_bytes = 8 * 1024;
    let s = Server::start(c).await;
    let mut hog = LineReader::open(http().post(s.url(CHAT)).json(
        &json!({"request_id": "hog", "options": {"chunks": 1000, "chunk_bytes": 4096, "interval_ms": 5}}),
    ))
    .await;
    let hub = s.bridge.hub().clone();
    while hub.live_bytes() < 8 * 1024 {
        hog.next().await.expect("the hog streams");
    }
    let resp = http()
        .post(s.url(CHAT))
        .json(&chat_body("hi"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["error_type"], "over_capacity");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_live_bytes")
    );
    let mut lean = Lean::connect(s.addr, json!({}), None).await;
    let ack = lean.emit("chat_message", json!({"message": "hi"})).await;
    let (name, data) = lean.next_within(WAIT).await.expect("the ack");
    assert_eq!(name, format!("ack:{ack}"));
    assert_eq!(data["error"]["error_type"], "over_capacity", "{data}");
    // The hog ends: its memory goes, and streams are admitted again.
    assert!(s.bridge.cancel("hog").unwrap());
    hog.rest().await;
    eventually("the budget is free", || hub.live_bytes() == 0).await;
    check_rules(&post_ndjson(&s.url(CHAT), &chat_body("hi again")).await);
    s.shutdown().await;
}

/// Past `limits.max_connections`, one more connection is answered 429 `over_capacity`
/// and closed: a plain request, an SSE follower, a WebSocket upgrade, a polling handshake.
/// Past it in Socket.IO sockets (a WebSocket counts as a socket once upgraded), a
/// handshake gets `connect_error`.
#[tokio::test]
async fn connection_limits_refuse_cleanly_on_every_transport() {
    let mut c = config();
    c.limits.max_connections = 3;
    let s = Server::start(c).await;
    let connections = s.bridge.connections().clone();
    // Three connections held: two idle ones and an SSE follower.
    let idle = std::net::TcpStream::connect(s.addr).unwrap();
    let idle2 = std::net::TcpStream::connect(s.addr).unwrap();
    let follower = LineReader::open(
        http()
            .get(s.url("/api/sessions/limits/events"))
            .header("accept", "text/event-stream"),
    )
    .await;
    assert_eq!(follower.status, 200);
    eventually("three connections open", || connections.count() == 3).await;

    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    for req in [
        fresh().get(s.url("/healthz")),
        fresh().get(s.url("/api/sessions/limits/events")),
        fresh().get(s.url("/socket.io/?EIO=4&transport=polling")),
        fresh()
            .get(s.url("/socket.io/?EIO=4&transport=websocket"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["connection"], "close");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["error_type"], "over_capacity");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_connections")
        );
    }
    // A place given back is taken again.
    drop(idle);
    eventually("the idle connection is gone", || connections.count() < 3).await;
    assert_eq!(
        fresh()
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop((follower, idle2));
    s.shutdown().await;

    // Socket.IO sockets count too: upgraded WebSockets hold no HTTP connection.
    let mut c = config();
    c.limits.max_connections = 2;
    let s = Server::start(c).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut sock = Sio::spawn(
            Client::Node,
            sio_spec(&s, &["websocket"], json!([{"wait_stdin": true}])),
        );
        sock.expect_type("waiting").await;
        held.push(sock);
    }
    let mut third = Sio::spawn(Client::Node, sio_spec(&s, &["websocket"], json!([])));
    let refused = third.expect_type("connect_error").await;
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("over_capacity"),
        "{refused}"
    );
    for mut sock in held {
        sock.send(json!({"disconnect": true})).await;
        sock.finish().await;
    }
    s.shutdown().await;
}

/// A small anonymous request, timed to its last byte.
async fn small_stream(base: &str, sse: bool) -> Duration {
    let t = Instant::now();
    let mut req = http()
        .post(format!("{base}{CHAT}"))
        .json(&chat_body("one small answer"));
    if sse {
        req = req.header("accept", "text/event-stream");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "a well-behaved client is served");
    let text = resp.text().await.unwrap();
    assert!(text.contains("completed"), "{text}");
    t.elapsed()
}

async fn small_socket_stream(lean: &mut Lean) -> Duration {
    let t = Instant::now();
    lean.emit("chat_message", json!({"message": "one small answer"}))
        .await;
    loop {
        let (name, data) = lean.next_within(WAIT).await.expect("the stream");
        assert_ne!(name, "error", "{data}");
        if name == "chat_complete" {
            return t.elapsed();
        }
        assert!(
            data.get("error").is_none(),
            "a well-behaved socket is served: {data}"
        );
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median latency of the three transports for a well-behaved client, over at least
/// `rounds` rounds and at least `window`: (NDJSON, SSE, Socket.IO).
async fn well_behaved(
    base: &str,
    addr: std::net::SocketAddr,
    rounds: usize,
    window: Duration,
) -> [Duration; 3] {
    let mut lean = Lean::connect(addr, json!({}), None).await;
    let (mut n, mut s, mut k) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    while n.len() < rounds || start.elapsed() < window {
        n.push(small_stream(base, false).await);
        s.push(small_stream(base, true).await);
        k.push(small_socket_stream(&mut lean).await);
    }
    [median(n), median(s), median(k)]
}

const MIB: u64 = 1 << 20;

/// The two attacks of the issue tracker, against the real binary with the shipped routes:
/// one anonymous request for the largest stream the route allows, read at full speed; then
/// 300 such requests whose clients never read. Peak memory stays within the live budget,
/// the retained budget and a fixed margin, and a well-behaved client is served meanwhile on
/// every transport within a few times its unloaded latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_anonymous_client_cannot_take_the_bridges_memory() {
    const LIVE: u64 = 256 * MIB;
    const RETAINED: u64 = 64 * MIB;
    /// The process itself, allocator slack, hyper and Socket.IO buffers of 300 connections.
    const MARGIN: u64 = 128 * MIB;
    let mut bridge = Spawn::new()
        .env("SWITCHYARD_LIMITS__MAX_LIVE_BYTES", LIVE)
        .env("SWITCHYARD_REPLAY__MAX_TOTAL_BYTES", RETAINED)
        .env("SWITCHYARD_LIMITS__SLOW_CONSUMER_SECS", 2)
        .env("SWITCHYARD_REPLAY__ORPHAN_GRACE_SECS", 2)
        .start()
        .await;
    let (pid, addr, sock) = (bridge.pid, bridge.addr, bridge.addr);
    let base = bridge.base();
    let unloaded = well_behaved(&base, sock, 5, Duration::ZERO).await;
    let huge = json!({"messages": [{"role": "user", "content": "x"}],
                      "options": {"chunks": 100000, "chunk_bytes": 4096}});

    // Attack 1: read at full speed, it ends with its own error at the text bound.
    let t = Instant::now();
    let text = http()
        .post(format!("{base}{CHAT}"))
        .json(&huge)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = parse_ndjson(&text);
    let n = events.len();
    assert_eq!(events[n - 2]["data"]["error_type"], "output_too_large");
    assert_eq!(events[n - 1]["data"]["reason"], "error");
    let attack1 = (peak_rss(pid), t.elapsed());

    // Attack 2: 300 such requests whose clients never read.
    let request = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{huge}",
        huge.to_string().len()
    );
    let mut attackers = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut conn = socket.connect(sock).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes())
            .await
            .unwrap();
        attackers.push(conn);
    }
    // Through the whole attack: its streams fill the budget, their readers are cut
    // (slow_consumer_secs), and they are cancelled (orphan grace), each with its text.
    let during = well_behaved(&base, sock, 5, Duration::from_secs(6)).await;
    let peak_attack2 = peak_rss(pid);
    drop(attackers);
    let after = rss(pid);
    eprintln!(
        "unloaded (NDJSON, SSE, Socket.IO) {unloaded:?}; attack 1: peak RSS {} MiB, {:?}; attack 2: peak RSS {} MiB, well-behaved {during:?}; RSS after {} MiB",
        attack1.0 / MIB,
        attack1.1,
        peak_attack2 / MIB,
        after / MIB
    );
    assert!(
        peak_attack2 < LIVE + RETAINED + MARGIN,
        "peak RSS {} MiB over {} MiB",
        peak_attack2 / MIB,
        (LIVE + RETAINED + MARGIN) / MIB
    );
    for (i, name) in ["NDJSON", "SSE", "Socket.IO"].iter().enumerate() {
        assert!(
            during[i] < unloaded[i] * 10 + Duration::from_millis(100),
            "{name}: {:?} during the attack against {:?} unloaded",
            during[i],
            unloaded[i]
        );
    }
    bridge.kill().await;
}
