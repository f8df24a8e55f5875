//! The Socket.IO adapter with real clients: legacy vocabulary over WebSocket and polling,
//! python-socketio, protocol v4 (socket.io-client 2.x), auth, acks and refusals.

use serde_json::{Value, json};

use crate::common::*;

fn chat_steps(message: &str, session: &str) -> Value {
    json!([
        {"emit": "chat_message", "data": {"message": message, "session_id": session}, "ack": true},
        {"wait_for": "chat_complete", "count": 1}
    ])
}

/// Runs one chat request on `client` over `transports`; returns the chunks and the
/// completion payload, checking the legacy vocabulary on the way.
async fn legacy_chat(
    s: &Server,
    client: Client,
    transports: &[&str],
    message: &str,
) -> (Vec<String>, Value) {
    let mut c = Sio::spawn(
        client,
        sio_spec(s, transports, chat_steps(message, "sess-1")),
    );
    c.expect_type("connect").await;
    let ack = c.expect_type("ack").await;
    assert!(ack["data"]["request_id"].is_string(), "{ack}");
    let (lines, code) = c.finish().await;
    assert_eq!(code, 0, "{lines:?}");
    let events = events_of(&lines);
    let mut chunks = Vec::new();
    let mut complete = None;
    for (name, data) in &events {
        match name.as_str() {
            "chat_chunk" => {
                assert_eq!(data["session_id"], "sess-1");
                assert!(
                    data["timestamp"]
                        .as_str()
                        .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
                    "{data}"
                );
                assert!(complete.is_none(), "no chunk after the completion");
                chunks.push(data["chunk"].as_str().unwrap().to_string());
            }
            "chat_complete" => complete = Some(data.clone()),
            other => panic!("unexpected legacy event {other}: {data}"),
        }
    }
    let complete = complete.expect("chat_complete");
    assert_eq!(complete["session_id"], "sess-1");
    (chunks, complete)
}

#[tokio::test]
async fn node_client_gets_the_legacy_vocabulary_over_websocket_and_polling() {
    let s = Server::default().await;
    for transports in [&["websocket"][..], &["polling"][..]] {
        let (chunks, complete) =
            legacy_chat(&s, Client::Node, transports, "hello brave new world").await;
        assert_eq!(
            chunks,
            ["hello ", "brave ", "new ", "world"],
            "{transports:?}"
        );
        assert_eq!(complete["full_response"], "hello brave new world");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn python_client_works_over_websocket_and_polling() {
    let s = Server::default().await;
    for transports in [&["websocket"][..], &["polling"][..]] {
        let (chunks, complete) = legacy_chat(&s, Client::Python, transports, "one two three").await;
        assert_eq!(chunks, ["one ", "two ", "three"], "{transports:?}");
        assert_eq!(complete["full_response"], "one two three");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn python_polling_survives_a_long_stream_of_small_chunks() {
    let s = Server::default().await;
    let steps = json!([
        {"emit": "chat_message", "data": {"message": "x", "session_id": "p", "options": {"chunks": 400, "chunk_bytes": 8}}, "ack": true},
        {"wait_for": "chat_complete", "count": 1, "timeout_ms": 20000}
    ]);
    let c = Sio::spawn(Client::Python, sio_spec(&s, &["polling"], steps));
    let (lines, code) = c.finish().await;
    assert_eq!(code, 0, "{:?}", lines.last());
    let chunks: Vec<String> = events_of(&lines)
        .into_iter()
        .filter(|(n, _)| n == "chat_chunk")
        .map(|(_, d)| d["chunk"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(chunks.len(), 400);
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(*c, switchyard::engine::script::generated_chunk(i as u64, 8));
    }
    s.shutdown().await;
}

#[tokio::test]
async fn protocol_v4_client_is_served_too() {
    let s = Server::default().await;
    for transports in [&["websocket"][..], &["polling"][..]] {
        let (chunks, complete) =
            legacy_chat(&s, Client::NodeV2, transports, "old client here").await;
        assert_eq!(chunks, ["old ", "client ", "here"]);
        assert_eq!(complete["full_response"], "old client here");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn parity_across_ndjson_sse_and_socketio() {
    let s = Server::default().await;
    let text = "the same words on every transport";
    let body =
        json!({"messages": [{"role": "user", "content": text}], "options": {"tool_calls": 1}});
    let ndjson = post_ndjson(&s.url(CHAT), &body).await;
    let sse_text = http()
        .post(s.url(CHAT))
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sse: Vec<Value> = parse_sse(&sse_text)
        .into_iter()
        .map(|f| json!({"event": f.event, "seq": f.id.unwrap().parse::<u64>().unwrap(), "data": f.data}))
        .collect();
    let strip = |evs: &[Value]| -> Vec<Value> {
        evs.iter()
            .map(|e| {
                let mut e = e.clone();
                e["data"].as_object_mut().unwrap().remove("metadata");
                e
            })
            .collect()
    };
    assert_eq!(
        strip(&ndjson),
        strip(&sse),
        "NDJSON and SSE carry the same events"
    );
    // The neutral-vocabulary route over Socket.IO gives the same events again.
    let steps = json!([
        {"emit": "tool_execute", "data": body, "ack": true},
        {"wait_for": "end", "count": 1}
    ]);
    for client in [Client::Node, Client::Python] {
        let c = Sio::spawn(client, sio_spec(&s, &["websocket"], steps.clone()));
        let (lines, code) = c.finish().await;
        assert_eq!(code, 0);
        let evs: Vec<Value> = events_of(&lines)
            .into_iter()
            .map(|(name, p)| {
                assert!(p["request_id"].is_string());
                json!({"event": name, "seq": p["seq"], "data": p["data"]})
            })
            .collect();
        let mut expected = strip(&ndjson);
        expected[0]["data"] = json!({"status": "started"});
        let mut got = strip(&evs);
        got[0]["data"] = json!({"status": "started"});
        assert_eq!(got, expected, "{client:?}");
    }
    // And the chat vocabulary carries the same chunks and output.
    let (chunks, complete) = legacy_chat(&s, Client::Node, &["websocket"], text).await;
    assert_eq!(chunks, check_rules(&ndjson));
    assert_eq!(
        complete["full_response"],
        ndjson[ndjson.len() - 2]["data"]["output"]
    );
    s.shutdown().await;
}

#[tokio::test]
async fn refusals_answer_the_ack_and_the_legacy_error_event() {
    let s = Server::default().await;
    let steps = json!([
        {"emit": "chat_message", "data": {"message": "x", "options": {"chunks": 999999}}, "ack": true},
        {"wait_for": "error", "count": 1},
        {"emit": "chat_message", "data": "not an object", "ack": true},
        {"wait_for": "error", "count": 2}
    ]);
    let c = Sio::spawn(Client::Node, sio_spec(&s, &["websocket"], steps));
    let (lines, code) = c.finish().await;
    assert_eq!(code, 0, "{lines:?}");
    let acks: Vec<&Value> = lines.iter().filter(|l| l["type"] == "ack").collect();
    assert_eq!(acks[0]["data"]["error"]["error_type"], "invalid_request");
    assert!(
        acks[0]["data"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chunks")
    );
    assert_eq!(acks[1]["data"]["error"]["error_type"], "invalid_request");
    let errors: Vec<(String, Value)> = events_of(&lines);
    assert_eq!(errors[0].0, "error");
    assert_eq!(errors[0].1["error_type"], "invalid_request");
    assert!(errors[0].1["timestamp"].is_string());
    s.shutdown().await;
}

#[tokio::test]
async fn jwt_handshake_on_socketio() {
    let mut c = config();
    c.auth.jwt_secret = Some("test-secret".into());
    let s = Server::start(c).await;
    let mut spec = sio_spec(&s, &["websocket"], chat_steps("hi", "a"));
    spec["auth"] = json!({"token": "not-a-jwt"});
    let (lines, code) = Sio::spawn(Client::Node, spec.clone()).finish().await;
    assert_eq!(code, 3, "{lines:?}");
    let refused = lines.iter().find(|l| l["type"] == "connect_error").unwrap();
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("unauthorized"),
        "{refused}"
    );
    spec["auth"] = json!({"token": crate::http::jwt("test-secret", "alice")});
    for client in [Client::Node, Client::Python] {
        let (lines, code) = Sio::spawn(client, spec.clone()).finish().await;
        assert_eq!(code, 0, "{client:?} {lines:?}");
        assert!(events_of(&lines).iter().any(|(n, _)| n == "chat_complete"));
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_made_up_legacy_vocabulary_is_configuration_only() {
    let mut c = config();
    c.routes_file = routes_file(
        r#"
[[route]]
name = "assist"
http = "/v2/assist"
engine = { kind = "script" }
[route.socketio]
namespace = "/legacy"
request_event = "ask"
request = { messages = [{ role = "user", content = "$.question.text" }], session_id = "$.conv", asked_by = "$.auth.user_id" }
emit_unmapped = false
[route.socketio.emit]
chunk = { event = "assist:token", payload = { t = "$.data.text", n = "$.seq", conv = "$.session_id", who = "$.route" } }
completion = { event = "assist:done", payload = { answer = { text = "$.data.output", state = "$.data.status" }, id = "$.request_id" } }
status_update = { event = "assist:status", payload = ["$.data.status", "$.seq"] }
"#,
    );
    c.flags_dir = flags_dir("version = 1\n[route.assist]\nmode = \"dual\"\n");
    let s = Server::start(c).await;
    let mut spec = sio_spec(
        &s,
        &["websocket"],
        json!([
            {"emit": "ask", "data": {"question": {"text": "made up words"}, "conv": "c-9"}, "ack": true},
            {"wait_for": "assist:done", "count": 1}
        ]),
    );
    spec["namespace"] = json!("/legacy");
    spec["auth"] = json!({"user_id": "u1"});
    let (lines, code) = Sio::spawn(Client::Node, spec).finish().await;
    assert_eq!(code, 0, "{lines:?}");
    let events = events_of(&lines);
    let rid = lines.iter().find(|l| l["type"] == "ack").unwrap()["data"]["request_id"].clone();
    assert_eq!(
        events[0],
        ("assist:status".to_string(), json!(["started", 0]))
    );
    let tokens: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "assist:token")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(tokens.len(), 3);
    assert_eq!(
        tokens[0],
        &json!({"t": "made ", "n": 1, "conv": "c-9", "who": "assist"})
    );
    let done = &events.iter().find(|(n, _)| n == "assist:done").unwrap().1;
    assert_eq!(
        done,
        &json!({"answer": {"text": "made up words", "state": "complete"}, "id": rid})
    );
    assert!(
        events.iter().all(|(n, _)| n.starts_with("assist:")),
        "unmapped events are dropped"
    );
    // The HTTP side of the same route is neutral.
    let ev = post_ndjson(&s.url("/v2/assist"), &chat_body("x y")).await;
    assert_eq!(check_rules(&ev), ["x ", "y"]);
    s.shutdown().await;
}

#[tokio::test]
async fn request_templates_read_the_handshake_auth() {
    let mut c = config();
    c.routes_file = routes_file(
        r#"
[[route]]
name = "whoami"
http = "/whoami"
engine = { kind = "script" }
[route.socketio]
request_event = "whoami"
request = { messages = [{ role = "user", content = "$.auth.user_id" }], session_id = "$.auth.team" }
"#,
    );
    c.flags_dir = flags_dir("version = 1\n[route.whoami]\nmode = \"dual\"\n");
    let s = Server::start(c).await;
    let mut spec = sio_spec(
        &s,
        &["websocket"],
        json!([
            {"emit": "whoami", "data": {}, "ack": true},
            {"wait_for": "end", "count": 1}
        ]),
    );
    spec["auth"] = json!({"user_id": "carol", "team": "blue"});
    let (lines, code) = Sio::spawn(Client::Python, spec).finish().await;
    assert_eq!(code, 0, "{lines:?}");
    let events = events_of(&lines);
    let chunks: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "chunk")
        .map(|(_, p)| &p["data"]["text"])
        .collect();
    assert_eq!(chunks, [&json!("carol")]);
    let rid = events[0].1["request_id"].as_str().unwrap().to_string();
    let replay = parse_ndjson(&get_text(&s.url(&format!("/api/streams/{rid}"))).await);
    assert_eq!(replay[replay.len() - 2]["data"]["output"], "carol");
    s.shutdown().await;
}

/// The shipped chat route, made to join the requester to its session's room, with a
/// Flask-SocketIO style `connected` greeting on `/`.
fn greeting_routes() -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(repo().join("routes.toml")).unwrap();
    let chat = shipped.replacen(
        "request_event = \"chat_message\"\n",
        "request_event = \"chat_message\"\njoin_session = true\n",
        1,
    );
    assert_ne!(chat, shipped);
    routes_file(&format!(
        "{chat}\n{}",
        r#"
[[namespace]]
name = "/"
connect_event = { event = "connected", payload = { message = "Connected to the chat server", timestamp = "$.now", user = "$.auth.user_id" } }
"#
    ))
}

/// Legacy Socket.IO behaviours as configuration: the namespace's `connected` event on
/// connect, rendered from the handshake auth and the time; and a `chat_message` with a
/// session id on a `join_session` route puts the socket in that session's room, so a later
/// stream of the session started over HTTP reaches it, each event once.
#[tokio::test]
async fn connect_event_and_join_session_are_configuration_only() {
    let mut c = config();
    c.routes_file = greeting_routes();
    let s = Server::start(c).await;
    let runs = [
        (Client::Node, "websocket", "s-node"),
        (Client::Python, "polling", "s-py"),
        (Client::NodeV2, "websocket", "s-v2"),
    ];
    for (client, transport, session) in runs {
        let mut spec = sio_spec(
            &s,
            &[transport],
            json!([
                {"wait_for": "connected", "count": 1},
                // Joined by its own request: this stream reaches it once, however its
                // delivery and the room's race.
                {"emit": "chat_message", "data": {"message": "first words here", "session_id": session}, "ack": true},
                {"wait_for": "chat_complete", "count": 1},
                {"wait_stdin": true},
                {"wait_for": "chat_complete", "count": 2}
            ]),
        );
        spec["auth"] = json!({"user_id": "dana"});
        let mut sock = Sio::spawn(client, spec);
        sock.expect_type("waiting").await;
        let events = post_ndjson(
            &s.url(CHAT),
            &json!({"messages": [{"role": "user", "content": "later over http"}], "session_id": session}),
        )
        .await;
        check_rules(&events);
        sock.send(json!("go")).await;
        let (lines, code) = sock.finish().await;
        assert_eq!(code, 0, "{client:?}: {lines:?}");
        let events = events_of(&lines);
        let (first, greeting) = &events[0];
        assert_eq!(
            first, "connected",
            "{client:?}: the greeting comes first: {events:?}"
        );
        assert_eq!(greeting["message"], "Connected to the chat server");
        assert_eq!(greeting["user"], "dana");
        let ts = greeting["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
        assert_eq!(
            events.iter().filter(|(n, _)| n == "connected").count(),
            1,
            "{client:?}"
        );
        let chunks: Vec<&str> = events
            .iter()
            .filter(|(n, _)| n == "chat_chunk")
            .map(|(_, d)| d["chunk"].as_str().unwrap())
            .collect();
        assert_eq!(
            chunks,
            ["first ", "words ", "here", "later ", "over ", "http"],
            "{client:?}: each event once"
        );
        let completes: Vec<&Value> = events
            .iter()
            .filter(|(n, _)| n == "chat_complete")
            .map(|(_, d)| &d["full_response"])
            .collect();
        assert_eq!(
            completes,
            [&json!("first words here"), &json!("later over http")],
            "{client:?}"
        );
    }
    s.shutdown().await;
}
