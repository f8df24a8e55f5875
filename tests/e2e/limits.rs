//! Limits and the cross-origin policy: streams per subject, request-head size, silent and
//! idle connections, Socket.IO packet size, and which origins may reach what.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

fn long_stream() -> Value {
    json!({"options": {"chunks": 200, "interval_ms": 50}})
}

#[tokio::test]
async fn streams_per_subject_are_limited_on_both_transports() {
    let mut c = config();
    c.limits.max_streams_per_subject = 2;
    let s = Server::start(c).await;
    let post = |user: Option<&str>| {
        let r = http().post(s.url(CHAT)).json(&long_stream());
        match user {
            Some(u) => r.header("x-user-id", u),
            None => r,
        }
    };
    let mut alice1 = LineReader::open(post(Some("alice"))).await;
    let mut alice2 = LineReader::open(post(Some("alice"))).await;
    alice1.next().await.unwrap();
    alice2.next().await.unwrap();

    // A third stream for alice is refused, over HTTP and over Socket.IO alike.
    let (st, ty) = error_of(post(Some("alice")).send().await.unwrap()).await;
    assert_eq!((st, ty.as_str()), (429, "over_capacity"));
    let r = post(Some("alice")).send().await.unwrap();
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("limits.max_streams_per_subject")
    );
    let mut sio = Sio::spawn(
        Client::Node,
        json!({"url": s.base(), "transports": ["websocket"], "auth": {"user_id": "alice"},
               "steps": [{"emit": "chat_message", "data": {"message": "x"}, "ack": true}]}),
    );
    let ack = sio.expect_type("ack").await;
    assert_eq!(ack["data"]["error"]["error_type"], "over_capacity", "{ack}");

    // Others are not affected: another user, a tenant, anonymous requests.
    for user in [Some("bob"), None] {
        let events = post_ndjson_with(post(user).json(&chat_body("hi there"))).await;
        assert_eq!(events.last().unwrap()["data"]["reason"], "completed");
    }

    // When one of alice's streams ends, her slot is free again.
    let id = alice1.headers["x-request-id"].to_str().unwrap().to_string();
    http()
        .post(s.url(&format!("/api/ai/cancel/{id}")))
        .send()
        .await
        .unwrap();
    alice1.rest().await;
    let events = post_ndjson_with(post(Some("alice")).json(&chat_body("again"))).await;
    assert_eq!(events.last().unwrap()["data"]["reason"], "completed");
    drop(alice2);
    s.shutdown().await;
}

async fn post_ndjson_with(req: reqwest::RequestBuilder) -> Vec<Value> {
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    parse_ndjson(&r.text().await.unwrap())
}

/// Sends raw bytes on a new connection and reads until the server closes it (or 10 s).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_the_server_goes_on() {
    let mut c = config();
    c.limits.max_header_bytes = 4096;
    let s = Server::start(c).await;

    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "a".repeat(8000)
    );
    let reply = raw_exchange(s.addr, big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");

    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let reply = raw_exchange(
        s.addr,
        format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");

    // Just under the limit is served.
    let fits = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-pad: {}\r\n\r\n",
        "a".repeat(3000)
    );
    let reply = raw_exchange(s.addr, fits.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    s.shutdown().await;
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed() {
    let mut c = config();
    c.limits.header_timeout_secs = 1;
    let s = Server::start(c).await;

    // Opens and sends nothing.
    let started = Instant::now();
    let reply = raw_exchange(s.addr, b"").await;
    let waited = started.elapsed();
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );

    // Sends half a request head, slowly, and never finishes it.
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slow.write_all(b"x-a: b\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
            && (n == 0 || buf.starts_with(b"HTTP/1.1 408"))
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a trickled request head is still open after {:?}",
        started.elapsed()
    );

    // Keep-alive: one request served, then the idle connection is closed.
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the idle keep-alive connection stayed open");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A stream in progress is not a silent connection: it outlives the timeout.
    let events = post_ndjson(
        &s.url(CHAT),
        &json!({"options": {"chunks": 6, "interval_ms": 500}}),
    )
    .await;
    assert_eq!(events.last().unwrap()["data"]["reason"], "completed");
    s.shutdown().await;
}

#[tokio::test]
async fn socketio_packets_over_the_max_payload_are_refused_without_harm() {
    let mut c = config();
    c.limits.socketio_max_payload = 2000;
    let s = Server::start(c).await;
    // The bystander asks for its stream once the oversized packet's client is gone.
    let bystander_spec = json!({"url": s.base(), "transports": ["websocket"], "steps": [
        {"wait_stdin": true},
        {"emit": "chat_message", "data": {"message": "still here"}, "ack": true},
        {"wait_for": "chat_complete", "timeout_ms": 10000},
    ]});
    for transports in [json!(["websocket"]), json!(["polling"])] {
        let mut bystander = Sio::spawn(Client::Node, bystander_spec.clone());
        bystander.expect_type("connect").await;
        let mut big = Sio::spawn(
            Client::Node,
            json!({"url": s.base(), "transports": transports, "steps": [
                {"emit": "chat_message", "data": {"message": "x".repeat(5000)}},
                {"wait_disconnect": true, "timeout_ms": 10000},
            ]}),
        );
        big.expect_type("connect").await;
        let gone = big.expect_type("disconnect").await;
        let (lines, _) = big.finish().await;
        bystander.expect_type("waiting").await;
        bystander.send(json!("go")).await;
        assert!(
            events_of(&lines).is_empty(),
            "{transports}: an oversized packet started a stream: {lines:?} ({gone})"
        );
        let done = bystander.expect_event("chat_complete").await;
        assert_eq!(done["data"]["full_response"], "still here");
    }
    // The payload limit is a packet limit: a request just under it is served.
    let mut fits = Sio::spawn(
        Client::Node,
        json!({"url": s.base(), "transports": ["websocket"], "steps": [
            {"emit": "chat_message", "data": {"message": "y".repeat(1500)}, "ack": true},
            {"wait_for": "chat_complete", "timeout_ms": 10000},
        ]}),
    );
    fits.expect_event("chat_complete").await;
    s.shutdown().await;
}

async fn status_and_headers(
    req: reqwest::RequestBuilder,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

/// The WebSocket upgrade of the Socket.IO endpoint, raw: its status line.
async fn ws_handshake_status(addr: std::net::SocketAddr, origin: &str) -> String {
    let req = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nhost: {addr}\r\n\
         connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\norigin: {origin}\r\n\r\n"
    );
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn cross_origin_requests_need_a_listed_origin_and_never_reach_admin() {
    // Default: nothing cross-origin.
    let mut c = config();
    c.admin.token = Some("adm".into());
    let s = Server::start(c.clone()).await;
    let evil = "https://evil.example";
    let (st, _, body) = status_and_headers(
        http()
            .post(s.url(CHAT))
            .header("origin", evil)
            .json(&chat_body("x")),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("cors.allowed_origins"), "{body}");
    assert_eq!(
        s.bridge.hub().held(),
        0,
        "a refused origin started a stream"
    );
    // Same origin and no origin (every non-browser client) are served.
    let own = s.base();
    for origin in [Some(own.as_str()), None] {
        let mut req = http().post(s.url(CHAT)).json(&chat_body("x"));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let (st, h, _) = status_and_headers(req).await;
        assert_eq!(st, 200);
        assert!(h.get("access-control-allow-origin").is_none());
    }
    // Socket.IO refuses a foreign page too: polling handshake and WebSocket upgrade.
    let (st, _, _) = status_and_headers(
        http()
            .get(s.url("/socket.io/?EIO=4&transport=polling"))
            .header("origin", evil),
    )
    .await;
    assert_eq!(st, 403);
    assert!(ws_handshake_status(s.addr, evil).await.contains(" 403 "));
    assert!(ws_handshake_status(s.addr, &own).await.contains(" 101 "));
    s.shutdown().await;

    // A listed origin gets CORS headers, preflights, Socket.IO; still never the admin API.
    let app = "https://app.example.com";
    c.cors.allowed_origins = vec![app.into()];
    let s = Server::start(c).await;
    let (st, h, _) = status_and_headers(
        http()
            .request(reqwest::Method::OPTIONS, s.url(CHAT))
            .header("origin", app)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            ),
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(h["access-control-allow-origin"], app);
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(
        h["access-control-allow-headers"],
        "content-type, authorization"
    );
    let (st, h, body) = status_and_headers(
        http()
            .post(s.url(CHAT))
            .header("origin", app)
            .json(&chat_body("cross origin")),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(h["access-control-allow-origin"], app);
    assert_eq!(h["access-control-expose-headers"], "x-request-id");
    assert_eq!(
        parse_ndjson(&body).last().unwrap()["data"]["reason"],
        "completed"
    );
    let (st, h, _) = status_and_headers(
        http()
            .get(s.url("/socket.io/?EIO=4&transport=polling"))
            .header("origin", app),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(h["access-control-allow-origin"], app);
    assert!(ws_handshake_status(s.addr, app).await.contains(" 101 "));
    for req in [
        http()
            .get(s.url("/admin/flags"))
            .bearer_auth("adm")
            .header("origin", app),
        http()
            .request(reqwest::Method::OPTIONS, s.url("/admin/flags"))
            .header("origin", app)
            .header("access-control-request-method", "PUT"),
    ] {
        let (st, h, _) = status_and_headers(req).await;
        assert_eq!(st, 403);
        assert!(h.get("access-control-allow-origin").is_none());
    }
    // Other origins are still refused.
    let (st, _, _) = status_and_headers(
        http()
            .post(s.url(CHAT))
            .header("origin", evil)
            .json(&chat_body("x")),
    )
    .await;
    assert_eq!(st, 403);
    s.shutdown().await;
}

/// An oversized body of this many bytes against the shipped 1 MiB `limits.max_body_bytes`.
const OVERSIZED: usize = 1_600_000;

/// Writes a whole oversized POST to the chat route (with Content-Length, or chunked
/// without it) on a new connection, then reads the answer to the end. Any write or read
/// error (EPIPE, reset) is returned.
async fn post_oversized_raw(addr: std::net::SocketAddr, chunked: bool) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(addr).await?;
    let mut body = vec![b'x'; OVERSIZED];
    body[..8].copy_from_slice(b"{\"pad\":\"");
    body[OVERSIZED - 2..].copy_from_slice(b"\"}");
    let framing = if chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {OVERSIZED}")
    };
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await?;
    if chunked {
        for piece in body.chunks(64 * 1024) {
            conn.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await?;
            conn.write_all(piece).await?;
            conn.write_all(b"\r\n").await?;
        }
        conn.write_all(b"0\r\n\r\n").await?;
    } else {
        conn.write_all(&body).await?;
    }
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::other("no answer in time"))??;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// The 413 every oversized try must read: status, `connection: close`, the JSON error.
fn assert_read_413(reply: &str) {
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(json["error"]["error_type"], "payload_too_large", "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_always_gets_its_413_over_raw_sockets() {
    let s = Server::default().await;
    for chunked in [false, true] {
        for i in 0..100 {
            match post_oversized_raw(s.addr, chunked).await {
                Ok(reply) => assert_read_413(&reply),
                Err(e) => panic!("try {i} (chunked: {chunked}): {e}"),
            }
        }
    }
    // Past `limits.oversize_discard_bytes` nothing is read: a body declared larger gets its
    // 413 at once, before it is sent, and the connection is closed.
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        10u64 << 30
    );
    assert_read_413(&raw_exchange(s.addr, head.as_bytes()).await);
    // A client that waits for `100 Continue` sends nothing before the answer: it gets the
    // 413 at once instead of an invitation to send what would be thrown away.
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: {OVERSIZED}\r\n\r\n"
    );
    assert_read_413(&raw_exchange(s.addr, head.as_bytes()).await);
    // Still serving.
    let events = post_ndjson(&s.url(CHAT), &chat_body("after all that")).await;
    assert_eq!(check_rules(&events).concat(), "after all that");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_always_gets_its_413_with_nodes_fetch() {
    let s = Server::default().await;
    for chunked in [false, true] {
        let lines = run_node(
            "http_client.js",
            json!({"mode": "oversized", "url": s.url(CHAT), "bytes": OVERSIZED, "tries": 100, "chunked": chunked}),
        )
        .await;
        let tries: Vec<&Value> = lines.iter().filter(|l| l["type"] == "try").collect();
        assert_eq!(tries.len(), 100);
        let failed: Vec<&&Value> = tries
            .iter()
            .filter(|t| {
                t["status"] != 413 || t["body"]["error"]["error_type"] != "payload_too_large"
            })
            .collect();
        assert!(
            failed.is_empty(),
            "chunked: {chunked}: {} of 100 tries did not read the 413: {failed:?}",
            failed.len()
        );
    }
    s.shutdown().await;
}
