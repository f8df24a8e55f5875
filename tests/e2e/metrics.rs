//! Metrics: exact counter movements for a known mix of streams on every transport, and
//! the real-Prometheus check of the dashboards (scripts/check-dashboards).

use std::collections::BTreeMap;

use serde_json::json;

use crate::common::*;

async fn metrics(s: &Server) -> BTreeMap<String, f64> {
    let text = get_text(&s.url("/metrics")).await;
    scrape(&text)
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no sample {key}"))
}

#[tokio::test]
async fn counters_move_by_exactly_what_happened() {
    let mut c = config();
    c.limits.max_body_bytes = 10_000;
    let s = Server::start(c).await;
    let before = metrics(&s).await;
    // Every family is there from start-up, at 0 for every configured route.
    assert_eq!(
        get(
            &before,
            r#"switchyard_streams_started_total{route="chat",transport="ndjson"}"#
        ),
        0.0
    );
    assert_eq!(
        get(&before, r#"switchyard_flag_mode{mode="dual",route="chat"}"#),
        1.0
    );
    assert_eq!(
        get(
            &before,
            r#"switchyard_flag_mode{mode="legacy",route="chat"}"#
        ),
        0.0
    );

    // 2 completed + 1 failed + 1 cancelled over NDJSON; 1 SSE; 1 Socket.IO; 1 rejected (413).
    known_mix(&s, "m").await;
    let r = http()
        .post(s.url(CHAT))
        .json(&json!({"pad": "x".repeat(20_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let hub = s.bridge.hub().clone();
    eventually("all streams ended", || hub.running() == 0).await;

    let after = metrics(&s).await;
    let delta = |key: &str| get(&after, key) - before.get(key).copied().unwrap_or(0.0);
    let k = |name: &str, labels: &str| format!("switchyard_{name}{{{labels}}}");
    let expect = [
        (
            k(
                "streams_started_total",
                r#"route="chat",transport="ndjson""#,
            ),
            4.0,
        ),
        (
            k("streams_started_total", r#"route="chat",transport="sse""#),
            1.0,
        ),
        (
            k(
                "streams_started_total",
                r#"route="chat",transport="socketio""#,
            ),
            1.0,
        ),
        (
            k(
                "streams_finished_total",
                r#"reason="completed",route="chat",transport="ndjson""#,
            ),
            2.0,
        ),
        (
            k(
                "streams_finished_total",
                r#"reason="error",route="chat",transport="ndjson""#,
            ),
            1.0,
        ),
        (
            k(
                "streams_finished_total",
                r#"reason="cancelled",route="chat",transport="ndjson""#,
            ),
            1.0,
        ),
        (
            k(
                "streams_finished_total",
                r#"reason="rejected",route="chat",transport="ndjson""#,
            ),
            1.0,
        ),
        (
            k(
                "streams_finished_total",
                r#"reason="completed",route="chat",transport="sse""#,
            ),
            1.0,
        ),
        (
            k(
                "streams_finished_total",
                r#"reason="completed",route="chat",transport="socketio""#,
            ),
            1.0,
        ),
        (
            k("engine_errors_total", r#"engine="script",route="chat""#),
            1.0,
        ),
        // Dual: every subject evaluates to Socket.IO, so HTTP requests are misrouted.
        (
            k(
                "flag_evaluations_total",
                r#"route="chat",transport="socketio""#,
            ),
            6.0,
        ),
        (
            k("misrouted_total", r#"route="chat",transport="ndjson""#),
            4.0,
        ),
        (k("misrouted_total", r#"route="chat",transport="sse""#), 1.0),
        (
            k("misrouted_total", r#"route="chat",transport="socketio""#),
            0.0,
        ),
        // Events delivered: 2 × (started + 3 chunks + completion + end) + failed (started,
        // 2 chunks, error, end) + the cancelled one's lines, over NDJSON.
        (
            k(
                "events_total",
                r#"event="chunk",route="chat",transport="sse""#,
            ),
            2.0,
        ),
        (
            k(
                "events_total",
                r#"event="end",route="chat",transport="ndjson""#,
            ),
            4.0,
        ),
        (
            k(
                "events_total",
                r#"event="error",route="chat",transport="ndjson""#,
            ),
            1.0,
        ),
        (
            k(
                "events_total",
                r#"event="chunk",route="chat",transport="socketio""#,
            ),
            4.0,
        ),
        (
            k(
                "events_total",
                r#"event="completion",route="chat",transport="socketio""#,
            ),
            1.0,
        ),
        (
            k(
                "events_total",
                r#"event="status_update",route="chat",transport="socketio""#,
            ),
            0.0,
        ),
        (
            k(
                "first_event_seconds_count",
                r#"route="chat",transport="ndjson""#,
            ),
            4.0,
        ),
        (
            k(
                "stream_duration_seconds_count",
                r#"route="chat",transport="socketio""#,
            ),
            1.0,
        ),
        (
            k("active_streams", r#"route="chat",transport="ndjson""#),
            0.0,
        ),
    ];
    for (key, want) in expect {
        assert_eq!(delta(&key), want, "{key}");
    }
    let sockets = || async {
        metrics(&s)
            .await
            .get(r#"switchyard_socketio_connections{namespace="/"}"#)
            .copied()
    };
    eventually_async("the Socket.IO connections gauge is back at 0", || async {
        sockets().await == Some(0.0)
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    for tool in ["prometheus", "promtool"] {
        let found = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "{tool} is not installed: scripts/test installs Debian's `prometheus` package (apt-get install prometheus)"
        );
    }
    let mut c = config();
    c.admin.token = Some("ops".into());
    let s = Server::start(c).await;
    // Traffic on all three transports, a flag change, a cancel and an engine error.
    known_mix(&s, "d").await;
    let r = http()
        .put(s.url("/admin/flags/chat"))
        .bearer_auth("ops")
        .json(&json!({"mode": "rollout", "percent": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A stream that keeps running while Prometheus scrapes, so rates have data.
    let _busy = LineReader::open(
        http()
            .post(s.url(CHAT))
            .json(&json!({"options": {"chunks": 3000, "interval_ms": 20}})),
    )
    .await;
    crate::support::needs::prometheus();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(repo().join("scripts/check-dashboards"))
            .arg(s.base())
            .output(),
    )
    .await
    .expect("the dashboard check finishes")
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dashboard check failed:\n{report}");
    s.shutdown().await;
}

/// A known mix on route `chat`: over NDJSON 2 completed, 1 failed (`fail_after`) and 1
/// cancelled stream; 1 completed over SSE; 1 completed over Socket.IO (4 chunks).
async fn known_mix(s: &Server, tag: &str) {
    for _ in 0..2 {
        post_ndjson(&s.url(CHAT), &chat_body("one two three")).await;
    }
    post_ndjson(
        &s.url(CHAT),
        &json!({"options": {"chunks": 5, "fail_after": 2}}),
    )
    .await;
    let id = format!("{tag}-cancelled");
    let mut live = LineReader::open(
        http()
            .post(s.url(CHAT))
            .json(&json!({"request_id": id, "options": {"chunks": 1000, "interval_ms": 20}})),
    )
    .await;
    live.until(|v| v["event"] == "chunk").await;
    http()
        .post(s.url(&format!("/api/ai/cancel/{id}")))
        .send()
        .await
        .unwrap();
    live.rest().await;
    let sse = http()
        .post(s.url(CHAT))
        .header("accept", "text/event-stream")
        .json(&chat_body("a b"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(sse.contains("event: end"));
    let (lines, code) = Sio::spawn(
        Client::Node,
        sio_spec(s, &["websocket"], json!([
            {"emit": "chat_message", "data": {"message": "x y z w", "session_id": tag}, "ack": true},
            {"wait_for": "chat_complete", "count": 1}
        ])),
    )
    .finish()
    .await;
    assert_eq!(code, 0, "{lines:?}");
}
