//! The upstream engines (SPEC section 7, issue 6): `ndjson`, `openai` and `ollama` in front
//! of upstream servers that each test starts on loopback, speaking those formats.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;
use serde_json::{Value, json};
use switchyard::routes::Routes;

use crate::common::*;
use crate::support::upstream::{Dropped, lines, ndjson_ok, respond, sse, tracked, trickle};

const FLAGS: &str = "version = 1\n[route.up]\nmode = \"dual\"\n";

fn ev(event: &str, seq: u64, data: Value) -> Value {
    json!({"event": event, "seq": seq, "data": data})
}

fn chunk(seq: u64, text: &str) -> Value {
    ev("chunk", seq, json!({"text": text}))
}

fn end(seq: u64, reason: &str) -> Value {
    ev("end", seq, json!({"reason": reason}))
}

/// Starts the bridge with one route `up` at `/up` whose engine is `engine` (a TOML
/// inline table).
async fn bridge(engine: &str) -> Server {
    let text = format!("[[route]]\nname = \"up\"\nhttp = \"/up\"\nengine = {engine}\n");
    let routes = Routes::parse(&text, "test").unwrap_or_else(|e| panic!("{e}"));
    let mut c = config();
    c.flags_dir = flags_dir(FLAGS);
    Server::start_with(c, routes).await
}

fn ndjson_engine(up: &Upstream, extra: &str) -> String {
    format!(
        "{{ kind = \"ndjson\", url = \"{}/stream\"{extra} }}",
        up.base
    )
}

fn chat_engine(kind: &str, up: &Upstream, extra: &str) -> String {
    let base = match kind {
        "openai" => format!("{}/v1", up.base),
        _ => up.base.clone(),
    };
    format!("{{ kind = \"{kind}\", base_url = \"{base}\", model = \"m\"{extra} }}")
}

async fn engine_errors(s: &Server, engine: &str) -> f64 {
    let m = scrape(&get_text(&s.url("/metrics")).await);
    let key = format!("switchyard_engine_errors_total{{engine=\"{engine}\",route=\"up\"}}");
    *m.get(&key)
        .unwrap_or_else(|| panic!("no sample {key} in {m:?}"))
}

/// Waits until `switchyard_engine_errors_total{route="up",engine}` is `want` (failing at
/// once if it goes past it), and checks that it stays there on the next scrape.
async fn expect_engine_errors(s: &Server, engine: &str, want: f64) {
    let what =
        format!("switchyard_engine_errors_total{{route=\"up\",engine=\"{engine}\"}} = {want}");
    eventually_async(&what, || async {
        let got = engine_errors(s, engine).await;
        assert!(got <= want, "{what}: it is {got}");
        got == want
    })
    .await;
    assert_eq!(engine_errors(s, engine).await, want);
}

/// The stream obeys the rules and ends in `error {error_type: "upstream_error"}` then
/// `end {reason: "error"}`, with no `completion` anywhere.
fn assert_upstream_error(events: &[Value]) {
    check_rules(events);
    let n = events.len();
    assert_eq!(events[n - 2]["event"], "error", "{events:?}");
    assert_eq!(
        events[n - 2]["data"]["error_type"],
        "upstream_error",
        "{events:?}"
    );
    assert!(
        events[n - 2]["data"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{events:?}"
    );
    assert_eq!(events[n - 1]["data"]["reason"], "error", "{events:?}");
    assert!(
        events.iter().all(|e| e["event"] != "completion"),
        "a failed upstream never looks finished: {events:?}"
    );
}

fn input() -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}]})
}

/// Starts an ndjson route in front of `reply`, sends one request, expects an
/// `upstream_error` stream counted once in `switchyard_engine_errors_total`.
async fn ndjson_fails_with<F, Fut>(extra: &str, reply: F) -> (Vec<Value>, Upstream)
where
    F: Fn(usize, Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let up = Upstream::start(reply).await;
    let s = bridge(&ndjson_engine(&up, extra)).await;
    expect_engine_errors(&s, "ndjson", 0.0).await;
    let events = post_ndjson(&s.url("/up"), &input()).await;
    assert_upstream_error(&events);
    expect_engine_errors(&s, "ndjson", 1.0).await;
    s.shutdown().await;
    (events, up)
}

fn chunk_texts(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e["event"] == "chunk")
        .map(|e| e["data"]["text"].as_str().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------
// ndjson

#[tokio::test]
async fn ndjson_relays_the_upstream_envelopes_under_the_stream_rules() {
    let body = lines(&[
        ev(
            "status_update",
            40,
            json!({"status": "started", "metadata": {"from": "upstream"}}),
        ),
        chunk(7, "Hel"),
        ev("status_update", 7, json!({"status": "thinking"})),
        ev("data", 99, json!({"k": [1, 2]})),
        chunk(3, "lo"),
        ev("completion", 0, json!({"status": "complete"})),
        end(1000, "completed"),
        chunk(1001, "after the end"),
    ]);
    let up = Upstream::start(move |_, _| {
        let body = body.clone();
        async move { ndjson_ok(body) }
    })
    .await;
    let s = bridge(&ndjson_engine(
        &up,
        ", headers = { \"x-api-key\" = \"k-123\", \"x-dir\" = \"${CARGO_MANIFEST_DIR}\" }",
    ))
    .await;
    let sent = json!({
        "request_id": "nd-1",
        "session_id": "sess-1",
        "messages": [{"role": "user", "content": "hello"}],
        "options": {"temperature": 0.5},
        "extra": {"anything": true},
    });
    let resp = http()
        .post(s.url("/up"))
        .header("authorization", "Bearer caller-token")
        .json(&sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = parse_ndjson(&resp.text().await.unwrap());
    let chunks = check_rules(&events);
    assert_eq!(chunks, ["Hel", "lo"]);
    assert_eq!(events[0]["data"]["metadata"]["request_id"], "nd-1");
    assert_eq!(events[0]["data"]["metadata"]["route"], "up");
    let started = events
        .iter()
        .filter(|e| e["event"] == "status_update" && e["data"]["status"] == "started")
        .count();
    assert_eq!(
        started, 1,
        "the upstream's own `started` is not duplicated: {events:?}"
    );
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "status_update",
            "chunk",
            "status_update",
            "data",
            "chunk",
            "completion",
            "end"
        ]
    );
    assert_eq!(events[2]["data"]["status"], "thinking");
    assert_eq!(events[3]["data"], json!({"k": [1, 2]}));
    let n = events.len();
    assert_eq!(events[n - 2]["data"]["status"], "complete");
    assert_eq!(events[n - 2]["data"]["output"], "Hello");
    assert_eq!(events[n - 1]["data"]["reason"], "completed");

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/stream");
    assert_eq!(
        seen[0].body, sent,
        "the whole request body is the upstream's input"
    );
    assert!(
        seen[0]
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    assert_eq!(seen[0].header("x-api-key"), Some("k-123"));
    assert_eq!(
        seen[0].header("x-dir"),
        Some(std::env::var("CARGO_MANIFEST_DIR").unwrap().as_str()),
        "header values interpolate ${{ENV}}"
    );
    assert_eq!(
        seen[0].header("authorization"),
        None,
        "the caller's Authorization is not forwarded unless the route says so"
    );
    expect_engine_errors(&s, "ndjson", 0.0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn ndjson_forwards_the_callers_authorization_when_the_route_says_so() {
    let body = lines(&[chunk(0, "ok"), end(1, "completed")]);
    let up = Upstream::start(move |_, _| {
        let body = body.clone();
        async move { ndjson_ok(body) }
    })
    .await;
    let s = bridge(&ndjson_engine(&up, ", forward_authorization = true")).await;
    let resp = http()
        .post(s.url("/up"))
        .header("authorization", "Bearer caller-token")
        .json(&input())
        .send()
        .await
        .unwrap();
    let events = parse_ndjson(&resp.text().await.unwrap());
    assert_eq!(check_rules(&events), ["ok"]);
    assert_eq!(
        up.seen()[0].header("authorization"),
        Some("Bearer caller-token")
    );
    s.shutdown().await;
}

#[tokio::test]
async fn ndjson_upstream_end_without_completion_completes_with_the_text() {
    let body = lines(&[chunk(0, "a "), chunk(1, "b"), end(2, "completed")]);
    let up = Upstream::start(move |_, _| {
        let body = body.clone();
        async move { ndjson_ok(body) }
    })
    .await;
    let s = bridge(&ndjson_engine(&up, "")).await;
    let events = post_ndjson(&s.url("/up"), &input()).await;
    assert_eq!(check_rules(&events), ["a ", "b"]);
    let n = events.len();
    assert_eq!(events[n - 2]["event"], "completion");
    assert_eq!(events[n - 2]["data"]["output"], "a b");
    assert_eq!(events[n - 1]["data"]["reason"], "completed");
    s.shutdown().await;
}

#[tokio::test]
async fn ndjson_re_emits_each_event_as_soon_as_its_line_is_complete() {
    let release = Arc::new(tokio::sync::Notify::new());
    let up = Upstream::start({
        let release = release.clone();
        move |_, _| {
            let release = release.clone();
            async move {
                let first = lines(&[chunk(0, "first")]);
                // The second line starts in the same write as the first one ends.
                let second = lines(&[chunk(1, "second")]);
                let (head, tail) = second.split_at(5);
                let (head, tail) = (head.to_string(), tail.to_string());
                let rest = tail + &lines(&[end(2, "completed")]);
                let frames = stream::iter([Ok::<_, Infallible>(Bytes::from(first + &head))]).chain(
                    stream::once(async move {
                        release.notified().await;
                        Ok(Bytes::from(rest))
                    }),
                );
                respond(200, "application/x-ndjson", Body::from_stream(frames))
            }
        }
    })
    .await;
    let s = bridge(&ndjson_engine(&up, "")).await;
    let mut r = LineReader::open(http().post(s.url("/up")).json(&input())).await;
    assert_eq!(r.status, 200);
    let head = r.until(|e| e["event"] == "chunk").await;
    assert_eq!(
        head.last().unwrap()["data"]["text"],
        "first",
        "the first line is relayed while the upstream still holds the rest"
    );
    release.notify_one();
    let mut all = head;
    all.extend(r.rest().await);
    assert_eq!(check_rules(&all), ["first", "second"]);
    s.shutdown().await;
}

#[tokio::test]
async fn ndjson_lines_split_at_every_byte_position_arrive_whole() {
    let texts = ["héllo ", "wörld ☃ ", "😀", "\"quoted\"\n"];
    let mut values = vec![ev("status_update", 0, json!({"status": "started"}))];
    for (i, t) in texts.iter().enumerate() {
        values.push(chunk(i as u64 + 1, t));
    }
    values.push(ev("completion", 9, json!({"status": "complete"})));
    values.push(end(10, "completed"));
    let body = lines(&values);
    let up = Upstream::start(move |_, _| {
        let body = body.clone();
        async move { respond(200, "application/x-ndjson", trickle(body)) }
    })
    .await;
    let s = bridge(&ndjson_engine(&up, "")).await;
    let events = post_ndjson(&s.url("/up"), &input()).await;
    assert_eq!(check_rules(&events), texts);
    assert_eq!(events.last().unwrap()["data"]["reason"], "completed");
    s.shutdown().await;
}

#[tokio::test]
async fn ndjson_one_mib_chunk_in_one_line_arrives_whole() {
    let big: String = "0123456789abcdef".repeat(65536);
    assert_eq!(big.len(), 1 << 20);
    let body = lines(&[chunk(0, &big), end(1, "completed")]);
    let up = Upstream::start(move |_, _| {
        let body = body.clone();
        async move { ndjson_ok(body) }
    })
    .await;
    let s = bridge(&ndjson_engine(&up, "")).await;
    let events = post_ndjson(&s.url("/up"), &input()).await;
    let chunks = check_rules(&events);
    assert_eq!(chunks.len(), 1);
    assert!(chunks[0] == big, "the 1 MiB chunk arrives whole");
    let n = events.len();
    assert_eq!(
        events[n - 2]["data"]["output"].as_str().unwrap().len(),
        1 << 20
    );
    assert_eq!(events[n - 1]["data"]["reason"], "completed");
    s.shutdown().await;
}

#[tokio::test]
async fn ndjson_eof_before_end_is_an_upstream_error_and_is_not_retried() {
    let (events, up) = ndjson_fails_with(", retries = 1", |_, _| async {
        ndjson_ok(lines(&[chunk(0, "partial "), chunk(1, "answer")]))
    })
    .await;
    assert_eq!(chunk_texts(&events), ["partial ", "answer"]);
    assert_eq!(up.seen().len(), 1, "no retry once bytes reached the bridge");
}

#[tokio::test]
async fn ndjson_malformed_line_is_an_upstream_error_and_ends_the_stream() {
    let (events, _) = ndjson_fails_with("", |_, _| async {
        let mut body = lines(&[chunk(0, "ok")]);
        body.push_str("this is not json\n");
        body.push_str(&lines(&[chunk(1, "never"), end(2, "completed")]));
        ndjson_ok(body)
    })
    .await;
    assert_eq!(chunk_texts(&events), ["ok"]);
}

#[tokio::test]
async fn ndjson_upstream_closing_mid_line_is_an_upstream_error() {
    let (events, _) = ndjson_fails_with("", |_, _| async {
        let mut body = lines(&[chunk(0, "ok")]);
        body.push_str(r#"{"event": "chunk", "seq": 1, "data": {"te"#);
        ndjson_ok(body)
    })
    .await;
    assert_eq!(chunk_texts(&events), ["ok"]);
}

#[tokio::test]
async fn ndjson_upstream_connection_reset_mid_line_is_an_upstream_error() {
    let (events, _) = ndjson_fails_with("", |_, _| async {
        let mut head = lines(&[chunk(0, "ok")]);
        head.push_str(r#"{"event": "chunk", "seq": 1, "da"#);
        // The body pauses after the head (so the head is written out), then fails: hyper
        // aborts the connection without the chunked terminator.
        let frames = stream::iter([Ok(Bytes::from(head))]).chain(stream::once(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(std::io::Error::other("the upstream dies"))
        }));
        respond(200, "application/x-ndjson", Body::from_stream(frames))
    })
    .await;
    assert_eq!(chunk_texts(&events), ["ok"]);
}

#[tokio::test]
async fn ndjson_500_answer_is_an_upstream_error() {
    let (_, up) = ndjson_fails_with(", retries = 0", |_, _| async {
        respond(
            500,
            "application/json",
            Body::from(r#"{"detail": "internal error"}"#),
        )
    })
    .await;
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn ndjson_4xx_answer_is_an_upstream_error_and_is_not_retried() {
    let (_, up) = ndjson_fails_with(", retries = 1", |_, _| async {
        respond(404, "application/json", Body::from(r#"{"detail": "no"}"#))
    })
    .await;
    assert_eq!(
        up.seen().len(),
        1,
        "only failures before any answer or 5xx retry"
    );
}

#[tokio::test]
async fn ndjson_html_answer_is_an_upstream_error() {
    ndjson_fails_with("", |_, _| async {
        respond(
            200,
            "text/html; charset=utf-8",
            Body::from("<!DOCTYPE html>\n<html><body><h1>502 Bad Gateway</h1></body></html>\n"),
        )
    })
    .await;
}

#[tokio::test]
async fn ndjson_connection_refused_is_an_upstream_error() {
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let s = bridge(&format!(
        "{{ kind = \"ndjson\", url = \"http://{closed}/stream\", retries = 1, connect_timeout_secs = 2 }}"
    ))
    .await;
    let events = post_ndjson(&s.url("/up"), &input()).await;
    assert_upstream_error(&events);
    expect_engine_errors(&s, "ndjson", 1.0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn ndjson_stalled_upstream_is_an_upstream_error_after_its_idle_timeout() {
    let t0 = Instant::now();
    let (events, _) = ndjson_fails_with(", idle_timeout_secs = 1", |_, _| async {
        let frames = stream::iter([Ok::<_, Infallible>(Bytes::from(lines(&[chunk(
            0, "so far",
        )])))])
        .chain(stream::pending());
        respond(200, "application/x-ndjson", Body::from_stream(frames))
    })
    .await;
    assert_eq!(chunk_texts(&events), ["so far"]);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the idle timeout (1 s) ends the stream: {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn ndjson_upstream_that_never_answers_is_an_upstream_error_after_its_timeout() {
    let t0 = Instant::now();
    ndjson_fails_with(", timeout_secs = 1, retries = 0", |_, _| async {
        std::future::pending::<()>().await;
        respond(200, "application/x-ndjson", Body::empty())
    })
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the timeout (1 s) ends the stream: {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn ndjson_5xx_before_the_first_byte_is_retried_once() {
    let up = Upstream::start(|attempt, _| async move {
        if attempt == 0 {
            respond(503, "text/plain", Body::from("busy"))
        } else {
            ndjson_ok(lines(&[
                chunk(0, "second "),
                chunk(1, "try"),
                ev("completion", 2, json!({"status": "complete"})),
                end(3, "completed"),
            ]))
        }
    })
    .await;
    let s = bridge(&ndjson_engine(&up, ", retries = 1")).await;
    let events = post_ndjson(&s.url("/up"), &input()).await;
    assert_eq!(check_rules(&events), ["second ", "try"]);
    assert_eq!(events.last().unwrap()["data"]["reason"], "completed");
    assert!(events.iter().all(|e| e["event"] != "error"), "{events:?}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, seen[1].body, "the retry sends the same input");
    expect_engine_errors(&s, "ndjson", 0.0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn ndjson_5xx_without_retries_is_an_upstream_error() {
    let (_, up) = ndjson_fails_with(", retries = 0", |attempt, _| async move {
        if attempt == 0 {
            respond(503, "text/plain", Body::from("busy"))
        } else {
            ndjson_ok(lines(&[chunk(0, "x"), end(1, "completed")]))
        }
    })
    .await;
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn ndjson_failed_streams_count_one_engine_error_each() {
    let up = Upstream::start(|_, seen| async move {
        match seen.body["case"].as_str().unwrap() {
            "ok" => ndjson_ok(lines(&[chunk(0, "fine"), end(1, "completed")])),
            "eof" => ndjson_ok(lines(&[chunk(0, "cut")])),
            "bad" => ndjson_ok("{oops\n".to_string()),
            _ => respond(500, "text/plain", Body::from("boom")),
        }
    })
    .await;
    let s = bridge(&ndjson_engine(&up, ", retries = 0")).await;
    let mut want = 0.0;
    for case in ["ok", "eof", "ok", "bad", "500", "ok"] {
        let events = post_ndjson(&s.url("/up"), &json!({"case": case})).await;
        if case == "ok" {
            assert_eq!(check_rules(&events), ["fine"], "{case}");
        } else {
            assert_upstream_error(&events);
            want += 1.0;
        }
        expect_engine_errors(&s, "ndjson", want).await;
    }
    s.shutdown().await;
}

/// The upstream's own `error` keeps its type (SPEC section 9: `error {error_type: "<engine's
/// type>"}`), and the stream is a failed stream like any other, so it counts in
/// `switchyard_engine_errors_total`.
#[tokio::test]
async fn ndjson_upstream_error_event_fails_the_stream_with_its_type() {
    let up = Upstream::start(|_, _| async {
        ndjson_ok(lines(&[
            chunk(0, "half"),
            ev(
                "error",
                1,
                json!({"error_type": "model_overloaded", "message": "try later"}),
            ),
            end(2, "error"),
        ]))
    })
    .await;
    let s = bridge(&ndjson_engine(&up, "")).await;
    let events = post_ndjson(&s.url("/up"), &input()).await;
    assert_eq!(check_rules(&events), ["half"]);
    let n = events.len();
    assert_eq!(events[n - 2]["event"], "error");
    assert_eq!(events[n - 2]["data"]["error_type"], "model_overloaded");
    assert_eq!(events[n - 1]["data"]["reason"], "error");
    assert!(events.iter().all(|e| e["event"] != "completion"));
    expect_engine_errors(&s, "ndjson", 1.0).await;
    s.shutdown().await;
}

/// An upstream that sends one chunk and then holds its answer open, recording when its
/// client goes away.
async fn held_open_upstream() -> (Upstream, Dropped) {
    let dropped: Dropped = Arc::default();
    let up = Upstream::start({
        let dropped = dropped.clone();
        move |_, _| {
            let dropped = dropped.clone();
            async move {
                let head = Bytes::from(lines(&[chunk(0, "a")]));
                let inner = stream::iter([Ok(head)]).chain(stream::pending()).boxed();
                respond(200, "application/x-ndjson", tracked(inner, dropped))
            }
        }
    })
    .await;
    (up, dropped)
}

/// The engine of the held-open tests: no timer of its own can close the upstream
/// connection while a test waits (its idle timeout is an hour, its overall timeout only
/// bounds the wait for the answer's head), so a close seen within `WAIT` is the one the
/// cancel or the leaving client caused, whatever the machine's load.
const HELD_OPEN: &str = ", idle_timeout_secs = 3600";

/// Waits until the upstream saw its connection close; returns when.
async fn wait_dropped(dropped: &Mutex<Option<Instant>>) -> Instant {
    eventually("the upstream connection closes", || {
        dropped.lock().unwrap().is_some()
    })
    .await;
    dropped.lock().unwrap().unwrap()
}

#[tokio::test]
async fn ndjson_cancel_closes_the_upstream_connection() {
    let (up, dropped) = held_open_upstream().await;
    let s = bridge(&ndjson_engine(&up, HELD_OPEN)).await;
    let mut r = LineReader::open(
        http()
            .post(s.url("/up"))
            .json(&json!({"request_id": "up-cancel", "messages": []})),
    )
    .await;
    let mut events = r.until(|e| e["event"] == "chunk").await;
    assert!(dropped.lock().unwrap().is_none());
    let t0 = Instant::now();
    let resp = http()
        .post(s.url("/api/ai/cancel/up-cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let gone = wait_dropped(&dropped).await;
    assert!(gone >= t0, "the upstream was closed before the cancel");
    events.extend(r.rest().await);
    assert_eq!(check_rules(&events), ["a"]);
    let n = events.len();
    assert_eq!(events[n - 2]["data"]["status"], "cancelled");
    assert_eq!(events[n - 2]["data"]["output"], "a");
    assert_eq!(events[n - 1]["data"]["reason"], "cancelled");
    assert_eq!(up.seen().len(), 1);
    expect_engine_errors(&s, "ndjson", 0.0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn ndjson_client_gone_closes_the_upstream_connection() {
    let (up, dropped) = held_open_upstream().await;
    let s = bridge(&ndjson_engine(&up, HELD_OPEN)).await;
    let resp = http()
        .post(s.url("/up"))
        .json(&input())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\"chunk\"") {
        let next = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("the chunk in time")
            .expect("more body")
            .unwrap();
        got.extend_from_slice(&next);
    }
    assert!(dropped.lock().unwrap().is_none());
    let t0 = Instant::now();
    drop(body);
    let gone = wait_dropped(&dropped).await;
    assert!(
        gone >= t0,
        "the upstream was closed before the client went away"
    );
    let hub = s.bridge.hub().clone();
    eventually("the orphaned stream ends", || hub.running() == 0).await;
    s.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// openai

fn delta(d: Value, finish: Value) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
    })
}

fn openai_happy_body() -> String {
    let mut body = String::from(": keep-alive comment\n\n");
    body.push_str(&sse(
        &[
            delta(json!({"role": "assistant", "content": ""}), Value::Null),
            delta(json!({"content": "Hel"}), Value::Null),
            delta(json!({"content": "lo"}), Value::Null),
            delta(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            delta(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                Value::Null,
            ),
            delta(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                Value::Null,
            ),
            delta(json!({}), json!("stop")),
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
        ],
        true,
    ));
    body
}

async fn openai_happy(trickled: bool) {
    let up = Upstream::start(move |_, _| async move {
        let body = openai_happy_body();
        let body = if trickled {
            trickle(body)
        } else {
            Body::from(body)
        };
        respond(200, "text/event-stream", body)
    })
    .await;
    let s = bridge(&chat_engine("openai", &up, ", api_key = \"sk-test\"")).await;
    let sent = json!({
        "request_id": "oa-1",
        "session_id": "sess-1",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "options": {"temperature": 0.25, "model": "other", "stream": false},
    });
    let events = post_ndjson(&s.url("/up"), &sent).await;
    assert_eq!(check_rules(&events), ["Hel", "lo"]);
    let tools: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "tool_event")
        .collect();
    assert!(
        tools
            .iter()
            .any(|e| e["data"]["call_id"] == "call_1" && e["data"]["tool_name"] == "get_weather"),
        "a tool_event starts call_1 get_weather: {events:?}"
    );
    assert!(
        tools.len() >= 2
            && tools.iter().all(|e| e["data"]["call_id"] == "call_1")
            && Value::Array(tools.iter().map(|e| (*e).clone()).collect())
                .to_string()
                .contains("Paris"),
        "the argument fragments follow the start: {tools:?}"
    );
    let n = events.len();
    let completion = &events[n - 2];
    assert_eq!(completion["event"], "completion");
    assert_eq!(completion["data"]["status"], "complete");
    assert_eq!(completion["data"]["output"], "Hello");
    let usage = &completion["data"]["total_usage"];
    assert_eq!(usage["prompt_tokens"], 3, "{completion}");
    assert_eq!(usage["completion_tokens"], 4, "{completion}");
    assert_eq!(usage["total_tokens"], 7, "{completion}");
    assert!(
        completion["data"].to_string().contains("\"stop\""),
        "the finish_reason is in the completion: {completion}"
    );
    assert_eq!(events[n - 1]["data"]["reason"], "completed");

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-test"));
    let b = &seen[0].body;
    assert_eq!(b["model"], "m", "{b}");
    assert_eq!(b["messages"], sent["messages"], "{b}");
    assert_eq!(b["stream"], true, "{b}");
    assert_eq!(b["stream_options"], json!({"include_usage": true}), "{b}");
    assert_eq!(b["temperature"], 0.25, "options pass through: {b}");
    assert!(
        b.get("request_id").is_none() && b.get("session_id").is_none(),
        "the bridge's own fields stay home: {b}"
    );
    expect_engine_errors(&s, "openai", 0.0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn openai_maps_content_tool_calls_and_usage() {
    openai_happy(false).await;
}

#[tokio::test]
async fn openai_sse_split_at_every_byte_position() {
    openai_happy(true).await;
}

async fn openai_fails_with<F, Fut>(reply: F) -> Vec<Value>
where
    F: Fn(usize, Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let up = Upstream::start(reply).await;
    let s = bridge(&chat_engine("openai", &up, "")).await;
    let events = post_ndjson(&s.url("/up"), &input()).await;
    assert_upstream_error(&events);
    expect_engine_errors(&s, "openai", 1.0).await;
    s.shutdown().await;
    events
}

#[tokio::test]
async fn openai_error_object_in_the_stream_is_an_upstream_error() {
    let events = openai_fails_with(|_, _| async {
        let body = sse(
            &[
                delta(json!({"content": "Hel"}), Value::Null),
                json!({"error": {"message": "The server is overloaded", "type": "server_error", "code": null}}),
            ],
            true,
        );
        respond(200, "text/event-stream", Body::from(body))
    })
    .await;
    assert_eq!(chunk_texts(&events), ["Hel"]);
}

#[tokio::test]
async fn openai_stream_without_done_is_an_upstream_error() {
    let events = openai_fails_with(|_, _| async {
        let body = sse(
            &[
                delta(json!({"content": "partial"}), Value::Null),
                delta(json!({}), json!("stop")),
            ],
            false,
        );
        respond(200, "text/event-stream", Body::from(body))
    })
    .await;
    assert_eq!(chunk_texts(&events), ["partial"]);
}

#[tokio::test]
async fn openai_401_is_an_upstream_error() {
    openai_fails_with(|_, _| async {
        respond(
            401,
            "application/json",
            Body::from(r#"{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}"#),
        )
    })
    .await;
}

#[tokio::test]
async fn openai_500_is_an_upstream_error() {
    openai_fails_with(|_, _| async {
        respond(
            500,
            "application/json",
            Body::from(r#"{"error": {"message": "internal", "type": "server_error"}}"#),
        )
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// ollama

fn ollama_line(content: &str) -> Value {
    json!({"model": "m", "created_at": "2024-01-01T00:00:00Z",
           "message": {"role": "assistant", "content": content}, "done": false})
}

async fn ollama_happy(trickled: bool) {
    let up = Upstream::start(move |_, _| async move {
        let body = lines(&[
            ollama_line("Hel"),
            ollama_line("lo"),
            json!({"model": "m", "created_at": "2024-01-01T00:00:01Z",
                   "message": {"role": "assistant", "content": ""},
                   "done": true, "done_reason": "stop", "eval_count": 5, "prompt_eval_count": 3}),
        ]);
        let body = if trickled {
            trickle(body)
        } else {
            Body::from(body)
        };
        respond(200, "application/x-ndjson", body)
    })
    .await;
    let s = bridge(&chat_engine("ollama", &up, "")).await;
    let sent =
        json!({"messages": [{"role": "user", "content": "hi"}], "options": {"temperature": 0.1}});
    let events = post_ndjson(&s.url("/up"), &sent).await;
    assert_eq!(check_rules(&events), ["Hel", "lo"]);
    let n = events.len();
    let completion = &events[n - 2];
    assert_eq!(completion["event"], "completion");
    assert_eq!(completion["data"]["status"], "complete");
    assert_eq!(completion["data"]["output"], "Hello");
    let usage = completion["data"]["total_usage"].to_string();
    assert!(
        completion["data"]["total_usage"].is_object() && usage.contains('5') && usage.contains('3'),
        "eval counts end up in the completion's usage: {completion}"
    );
    assert_eq!(events[n - 1]["data"]["reason"], "completed");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/api/chat");
    let b = &seen[0].body;
    assert_eq!(b["model"], "m", "{b}");
    assert_eq!(b["messages"], sent["messages"], "{b}");
    assert_eq!(b["stream"], true, "{b}");
    expect_engine_errors(&s, "ollama", 0.0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn ollama_maps_messages_and_done_to_chunks_and_completion() {
    ollama_happy(false).await;
}

#[tokio::test]
async fn ollama_lines_split_at_every_byte_position() {
    ollama_happy(true).await;
}

#[tokio::test]
async fn ollama_stream_without_done_is_an_upstream_error() {
    let up = Upstream::start(|_, _| async {
        respond(
            200,
            "application/x-ndjson",
            Body::from(lines(&[ollama_line("Hel"), ollama_line("lo")])),
        )
    })
    .await;
    let s = bridge(&chat_engine("ollama", &up, "")).await;
    let events = post_ndjson(&s.url("/up"), &input()).await;
    assert_upstream_error(&events);
    assert_eq!(chunk_texts(&events), ["Hel", "lo"]);
    expect_engine_errors(&s, "ollama", 1.0).await;
    s.shutdown().await;
}
