//! Fan-out and cancel across transports: one engine stream, delivered to its requester,
//! to every socket of its session room and to every HTTP session follower at once.

use serde_json::{Value, json};

use crate::common::*;

fn chat_events_by_kind(events: &[(String, Value)], name: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, d)| d.clone())
        .collect()
}

#[tokio::test]
async fn one_stream_reaches_requester_room_and_followers_on_every_transport() {
    let s = Server::default().await;
    let session = "room-1";
    let mut follower =
        LineReader::open(http().get(s.url(&format!("/api/sessions/{session}/events")))).await;
    assert_eq!(follower.status, 200);
    assert_eq!(follower.headers["content-type"], "application/x-ndjson");
    // A: joins with `join`. B: joins through its handshake auth. C: joins, then requests.
    let mut a = Sio::spawn(
        Client::Node,
        sio_spec(
            &s,
            &["websocket"],
            json!([
                {"emit": "join", "data": {"session_id": session}, "ack": true},
                {"wait_for": "chat_complete", "count": 2}
            ]),
        ),
    );
    let mut spec_b = sio_spec(
        &s,
        &["polling"],
        json!([{"wait_for": "chat_complete", "count": 2}]),
    );
    spec_b["auth"] = json!({"session_id": session});
    let mut b = Sio::spawn(Client::Python, spec_b);
    let mut c = Sio::spawn(
        Client::Node,
        sio_spec(
            &s,
            &["polling"],
            json!([
                {"emit": "join", "data": {"session_id": session}, "ack": true},
                {"wait_stdin": true},
                {"wait_for": "chat_complete", "count": 2},
                {"sleep_ms": 300}
            ]),
        ),
    );
    let ack = a.expect_type("ack").await;
    assert_eq!(ack["data"], json!({"session_id": session}));
    b.expect_type("connect").await;
    c.expect_type("waiting").await;

    // Stream 1, started over HTTP.
    let http_events = post_ndjson(
        &s.url(CHAT),
        &json!({"session_id": session, "messages": [{"role": "user", "content": "from http"}]}),
    )
    .await;
    check_rules(&http_events);
    // Stream 2, started by C over Socket.IO, which is also in the room.
    c.send(json!({"emit": "chat_message", "data": {"message": "from socket", "session_id": session}, "ack": true})).await;

    let mut by_stream: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    let mut ended = 0;
    while ended < 2 {
        let v = follower.next().await.unwrap();
        if v["event"] == "heartbeat" {
            continue;
        }
        assert_eq!(v["route"], "chat");
        ended += usize::from(v["event"] == "end");
        by_stream
            .entry(v["request_id"].as_str().unwrap().to_string())
            .or_default()
            .push(v);
    }
    assert_eq!(by_stream.len(), 2);
    let mut outputs: Vec<String> = by_stream
        .values()
        .map(|evs| check_rules(evs).concat())
        .collect();
    outputs.sort();
    assert_eq!(outputs, ["from http", "from socket"]);

    for (name, client) in [("A", a), ("B", b), ("C", c)] {
        let (lines, code) = client.finish().await;
        assert_eq!(code, 0, "{name}: {lines:?}");
        let events = events_of(&lines);
        let mut completes: Vec<String> = chat_events_by_kind(&events, "chat_complete")
            .iter()
            .map(|d| d["full_response"].as_str().unwrap().to_string())
            .collect();
        completes.sort();
        assert_eq!(
            completes,
            ["from http", "from socket"],
            "{name} gets each stream once"
        );
        let chunks = chat_events_by_kind(&events, "chat_chunk");
        assert_eq!(chunks.len(), 4, "{name}: each chunk once: {chunks:?}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn cancel_crosses_transports() {
    let s = Server::default().await;
    // Started over Socket.IO, cancelled over HTTP.
    let mut sock = Sio::spawn(
        Client::Node,
        sio_spec(
            &s,
            &["websocket"],
            json!([
                {"emit": "chat_message", "data": {"message": "x", "session_id": "c1", "options": {"chunks": 500, "interval_ms": 20}}, "ack": true},
                {"wait_for": "chat_chunk", "count": 1},
                {"wait_for": "chat_complete", "count": 1}
            ]),
        ),
    );
    let ack = sock.expect_type("ack").await;
    let id = ack["data"]["request_id"].as_str().unwrap().to_string();
    sock.expect_event("chat_chunk").await;
    let r = http()
        .post(s.url(&format!("/api/ai/cancel/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"cancelled": true}));
    let (lines, code) = sock.finish().await;
    assert_eq!(code, 0, "{:?}", &lines[lines.len().saturating_sub(4)..]);
    let events = events_of(&lines);
    let chunks: String = chat_events_by_kind(&events, "chat_chunk")
        .iter()
        .map(|d| d["chunk"].as_str().unwrap().to_string())
        .collect();
    let complete = &chat_events_by_kind(&events, "chat_complete")[0];
    assert_eq!(
        complete["full_response"].as_str().unwrap(),
        chunks,
        "the completion carries the text so far"
    );
    assert!(chunks.len() < 500 * 16);
    // The replay shows the neutral end.
    let replay = parse_ndjson(
        &http()
            .get(s.url(&format!("/api/streams/{id}")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    check_rules(&replay);
    assert_eq!(replay[replay.len() - 2]["data"]["status"], "cancelled");
    assert_eq!(replay.last().unwrap()["data"]["reason"], "cancelled");
    // Cancelling again: it has ended.
    let r = http()
        .post(s.url(&format!("/api/ai/cancel/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"cancelled": false})
    );

    // Started over HTTP, cancelled over Socket.IO.
    let mut stream = LineReader::open(
        http()
            .post(s.url(CHAT))
            .header("accept", "application/x-ndjson")
            .json(&json!({"request_id": "h1", "options": {"chunks": 500, "interval_ms": 20}})),
    )
    .await;
    stream.until(|v| v["seq"] == 2).await;
    let canceller = Sio::spawn(
        Client::Python,
        sio_spec(
            &s,
            &["websocket"],
            json!([{"emit": "cancel", "data": {"request_id": "h1"}, "ack": true}]),
        ),
    );
    let (lines, code) = canceller.finish().await;
    assert_eq!(code, 0);
    assert_eq!(
        lines.iter().find(|l| l["type"] == "ack").unwrap()["data"],
        json!({"cancelled": true})
    );
    let rest = stream.rest().await;
    let n = rest.len();
    assert_eq!(rest[n - 2]["data"]["status"], "cancelled");
    assert_eq!(rest[n - 1]["data"]["reason"], "cancelled");
    s.shutdown().await;
}

#[tokio::test]
async fn socketio_resume_replays_the_missing_events() {
    let s = Server::default().await;
    let all = post_ndjson(
        &s.url("/api/ai/agent/execute"),
        &json!({"request_id": "ag-1", "messages": [{"role": "user", "content": "a b c d"}]}),
    )
    .await;
    let steps = json!([
        {"emit": "resume", "data": {"request_id": "ag-1", "after": 2}, "ack": true},
        {"wait_for": "end", "count": 1}
    ]);
    let (lines, code) = Sio::spawn(Client::Node, sio_spec(&s, &["websocket"], steps))
        .finish()
        .await;
    assert_eq!(code, 0);
    let got: Vec<Value> = events_of(&lines)
        .into_iter()
        .map(|(n, p)| json!({"event": n, "seq": p["seq"], "data": p["data"]}))
        .collect();
    assert_eq!(got, all[3..].to_vec());
    // A gap is refused through the ack.
    let steps =
        json!([{"emit": "resume", "data": {"request_id": "nope", "after": 0}, "ack": true}]);
    let (lines, _) = Sio::spawn(Client::Node, sio_spec(&s, &["websocket"], steps))
        .finish()
        .await;
    assert_eq!(
        lines.iter().find(|l| l["type"] == "ack").unwrap()["data"]["error"]["error_type"],
        "unknown_stream"
    );
    s.shutdown().await;
}

/// Runs a once-probe (tests/interop/once_probe.js or .py) and returns its summary line.
async fn once_probe(client: Client, spec: Value) -> Value {
    let dir = repo().join("tests/interop");
    let mut cmd = match client {
        Client::Python => {
            crate::support::needs::python_client();
            let mut c = tokio::process::Command::new(dir.join(".venv/bin/python"));
            c.arg(dir.join("once_probe.py"));
            c
        }
        Client::Node | Client::NodeV2 => {
            crate::support::needs::node_clients();
            let mut c = tokio::process::Command::new("node");
            c.arg(dir.join("once_probe.js"));
            c
        }
    };
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(240),
        cmd.arg(spec.to_string()).kill_on_drop(true).output(),
    )
    .await
    .expect("the probe finishes")
    .unwrap_or_else(|e| panic!("cannot run the {client:?} probe: {e} (scripts/interop-setup)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let summary: Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "{client:?} probe printed {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        summary.get("fatal").is_none(),
        "{client:?} probe: {summary}"
    );
    summary
}

/// SPEC 9: a socket that is both the requester and a member of the session room gets
/// each event once. Hundreds of streams per way of joining (handshake `auth`, `join`),
/// per client (socket.io-client 4.x, python-socketio) and per connection style (a new
/// socket per stream, a long-lived one): the race between the requester's cursor and the
/// room's is lost often enough at this volume that a single duplicate shows. The server
/// runs on worker threads, as in production, so its tasks really race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_in_its_session_room_gets_each_stream_once() {
    let s = Server::default().await;
    let mut report = Vec::new();
    let mut total = 0;
    for (client, streams) in [(Client::Node, 150), (Client::Python, 100)] {
        for join in ["auth", "join"] {
            for connection in ["new", "long"] {
                let summary = once_probe(
                    client,
                    json!({"url": s.base(), "transports": ["websocket"], "join": join,
                           "connection": connection, "streams": streams, "parallel": 8,
                           "grace_ms": 30}),
                )
                .await;
                report.push(format!("{client:?}/{join}/{connection}: {summary}"));
                total += streams;
                assert_eq!(summary["missing"], 0, "{}", report.join("\n"));
                assert_eq!(summary["duplicates"], 0, "{}", report.join("\n"));
            }
        }
    }
    // Long-polling too, on fewer streams (each poll is a request).
    let summary = once_probe(
        Client::Node,
        json!({"url": s.base(), "transports": ["polling"], "join": "auth",
               "connection": "new", "streams": 60, "parallel": 6, "grace_ms": 30}),
    )
    .await;
    total += 60;
    report.push(format!("Node/auth/new/polling: {summary}"));
    assert_eq!(summary["missing"], 0, "{}", report.join("\n"));
    assert_eq!(summary["duplicates"], 0, "{}", report.join("\n"));
    eprintln!("{total} streams, each once:\n{}", report.join("\n"));
    s.shutdown().await;
}

/// socketioxide sends CONNECT before it marks the socket connected, so a client that asks
/// for a stream the moment it is connected can have that stream's first emit find the
/// socket "closed": the stream must still arrive, whole and once. Hundreds of new sockets,
/// each asking at once, on worker threads so the connect and the request really race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_the_moment_a_socket_connects_is_delivered() {
    let s = Server::default().await;
    let summary = once_probe(
        Client::Node,
        json!({"url": s.base(), "transports": ["websocket"], "join": "auth",
               "connection": "new", "streams": 1500, "parallel": 48, "grace_ms": 0}),
    )
    .await;
    assert_eq!(summary["missing"], 0, "{summary}");
    assert_eq!(summary["duplicates"], 0, "{summary}");
    s.shutdown().await;
}
