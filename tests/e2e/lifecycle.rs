//! The process: `switchyard serve` on its defaults, graceful shutdown on SIGTERM with live
//! streams on both transports, `switchyard check`.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn sigterm_drains_live_streams_on_both_transports_and_exits_zero() {
    let mut bridge = Spawn::new()
        .log("info")
        .env("SWITCHYARD_SHUTDOWN__GRACE_SECS", 2)
        .start()
        .await;
    let base = bridge.base();
    let long = json!({"options": {"chunks": 100000, "interval_ms": 50}});
    let short = json!({"options": {"chunks": 10, "interval_ms": 50}});
    let mut http_long = LineReader::open(http().post(format!("{base}{CHAT}")).json(&long)).await;
    let mut http_short = LineReader::open(
        http()
            .post(format!("{base}{CHAT}"))
            .header("accept", "application/x-ndjson")
            .json(&short),
    )
    .await;
    http_long.until(|v| v["event"] == "chunk").await;
    let spec = json!({"url": base, "transports": ["websocket"], "steps": [
        {"emit": "chat_message", "data": {"message": "x", "session_id": "s", "options": {"chunks": 100000, "interval_ms": 50}}, "ack": true},
        {"wait_for": "chat_complete", "count": 1, "timeout_ms": 20000}
    ]});
    let mut sock = Sio::spawn(Client::Node, spec);
    sock.expect_event("chat_chunk").await;

    bridge.sigterm();
    // New work is refused while draining (once the signal is handled).
    let late = format!("{base}{CHAT}");
    eventually_async("requests during the drain get 503 draining", || async {
        match http().post(&late).json(&chat_body("late")).send().await {
            Ok(r) if r.status() == 503 => {
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["error"]["error_type"], "draining");
                true
            }
            Ok(_) => false,
            Err(e) => panic!("the bridge stopped before refusing a request: {e}"),
        }
    })
    .await;

    // The short stream finishes within the grace time; the long ones end with `shutdown`.
    let short_events = http_short.rest().await;
    check_rules(&short_events);
    assert_eq!(short_events.last().unwrap()["data"]["reason"], "completed");
    let rest = http_long.rest().await;
    let n = rest.len();
    assert_eq!(rest[n - 2]["data"]["status"], "shutdown");
    assert_eq!(rest[n - 1]["data"]["reason"], "shutdown");
    let (lines, code) = sock.finish().await;
    assert_eq!(code, 0, "{lines:?}");
    assert!(
        events_of(&lines).iter().any(|(n, _)| n == "chat_complete"),
        "the legacy client hears the end through its completion event"
    );

    let exit = bridge.exit_within(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0));
    assert!(
        !bridge.ready.exists(),
        "the ready file goes with the bridge"
    );
}

#[tokio::test]
async fn in_process_shutdown_ends_session_followers() {
    let mut s = Server::default().await;
    let mut follower = LineReader::open(http().get(s.url("/api/sessions/z/events"))).await;
    let mut live = LineReader::open(
        http()
            .post(s.url(CHAT))
            .json(&json!({"session_id": "z", "options": {"chunks": 100000, "interval_ms": 20}})),
    )
    .await;
    live.until(|v| v["event"] == "chunk").await;
    follower.until(|v| v["event"] == "chunk").await;
    s.begin_shutdown();
    let rest = live.rest().await;
    assert_eq!(rest.last().unwrap()["data"]["reason"], "shutdown");
    let rest = follower.rest().await;
    assert_eq!(rest.last().unwrap()["data"]["reason"], "shutdown");
    s.shutdown().await;
}

#[test]
fn check_validates_the_shipped_files_and_lists_every_problem() {
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The worst case the shipped settings allow, by part, for sizing a container.
    let report = String::from_utf8_lossy(&ok.stdout);
    for part in [
        "one stream",
        "live streams",
        "finished streams",
        "connections",
        "total",
    ] {
        assert!(report.contains(part), "{report}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.toml"),
        "[[route]]\nname = \"a\"\nhttp = \"/a\"\nengine = { kind = \"magic\" }\n[[route]]\nname = \"b\"\nhttp = \"/a\"\nengine = { kind = \"script\" }\nsocketio = { request_event = \"go\", emit = { chunk = { event = \"c\", payload = \"$.nope\" } } }\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("flags")).unwrap();
    std::fs::write(dir.path().join("flags/flags.toml"), "version = 1\n").unwrap();
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("route \"a\", field `engine.kind`"), "{err}");
    assert!(
        err.contains("route \"b\", field `socketio.emit.chunk.payload"),
        "{err}"
    );
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("serve")
        .current_dir(dir.path())
        .env("SWITCHYARD_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!serve.status.success(), "serve refuses a bad routes file");
    assert!(String::from_utf8_lossy(&serve.stderr).contains("engine.kind"));
}

/// A flags file naming a route the routes file lacks is found before the port is bound:
/// `serve` exits non-zero naming the route, and never says it is listening (nor writes its
/// ready file).
#[test]
fn serve_validates_the_flags_before_it_listens() {
    let flags = flags_dir("version = 1\n[route.ghost]\nmode = \"dual\"\n");
    let ready = flags.join("ready.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("serve")
        .arg("--ready-file")
        .arg(&ready)
        .current_dir(repo())
        .env("SWITCHYARD_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_FLAGS_DIR", &flags)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("\"ghost\"") && stderr.contains("unknown route"),
        "the error names the route: {stderr}"
    );
    assert!(
        !stdout.contains("listening") && !stderr.contains("listening"),
        "nothing says it listens: {stdout}{stderr}"
    );
    assert!(!ready.exists(), "no ready file is written");
}

/// `check` reads every file whatever the others hold, and lists each problem of each in one
/// shape: `file: [route "name", ]field `key`: message`.
#[test]
fn check_lists_the_problems_of_every_file_in_one_shape() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("switchyard.toml"),
        "heartbeat_secs = 0\nroutes_file = \"r.toml\"\nflags_dir = \"f\"\n[limits]\nmax_streams = 0\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("r.toml"),
        "[[route]]\nname = \"a\"\nhttp = { path = \"/a\", colour = 1 }\nengine = { kind = \"script\", max_chunk = 3 }\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("f")).unwrap();
    std::fs::write(
        dir.path().join("f/flags.toml"),
        "version = 1\n[route.a]\nmode = \"fast\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter_map(|l| l.strip_prefix("  - ")).collect();
    assert_eq!(
        lines,
        [
            "switchyard.toml: field `heartbeat_secs`: must be at least 1",
            "switchyard.toml: field `limits.max_streams`: must be at least 1",
            "r.toml: route \"a\", field `http.colour`: unknown field (expected path, sse_framing, emit, emit_unmapped, request, default_format)",
            "r.toml: route \"a\", field `engine.max_chunk`: unknown field (expected max_chunks, max_chunk_bytes, max_interval_ms, max_tool_calls, fault_drills)",
            "f/flags.toml: route \"a\", field `mode`: \"fast\" is not a mode (expected legacy, dual, rollout or new)",
        ],
        "{err}"
    );
    assert!(err.starts_with("5 problems found:"), "{err}");
}
