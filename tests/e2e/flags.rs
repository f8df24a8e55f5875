//! Per-route flags with real clients: evaluation API, enforcement on both transports, hot
//! reload (valid and invalid edits), the admin API, the audit log and the CLI.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const TOKEN: &str = "ops-token";

fn with_flags(flags_toml: &str) -> switchyard::Config {
    let mut c = config();
    c.flags_dir = flags_dir(flags_toml);
    c.admin.token = Some(TOKEN.into());
    c.admin.tokens.insert("alice".into(), "alice-token".into());
    c
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = http().get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn admin(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.bearer_auth(TOKEN)
}

#[tokio::test]
async fn evaluation_api_follows_the_spec_vectors() {
    let s = Server::start(with_flags(
        "version = 7\n[route.chat]\nmode = \"rollout\"\npercent = 25.0\n[route.agent]\nmode = \"rollout\"\npercent = 2.52\n",
    ))
    .await;
    let (st, v) = get_json(&s.url("/api/flags/chat?user=alice")).await;
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({"transport": "http", "mode": "rollout", "reason": "percent", "bucket": 2265})
    );
    // agent:user-42 → 252, and 2.52 % is 252 basis points: not below, so socketio.
    let (_, v) = get_json(&s.url("/api/flags/agent?user=user-42")).await;
    assert_eq!(
        v,
        json!({"transport": "socketio", "mode": "rollout", "reason": "percent", "bucket": 252})
    );
    let (_, v) = get_json(&s.url("/api/flags/chat")).await;
    assert_eq!(
        v,
        json!({"transport": "socketio", "mode": "rollout", "reason": "no_sticky_key", "bucket": null})
    );
    let (_, all) = get_json(&s.url("/api/flags?user=alice")).await;
    assert_eq!(all["flags_version"], 7);
    assert_eq!(
        all["routes"]["tools"],
        json!({"transport": "socketio", "mode": "legacy", "reason": "mode", "bucket": null})
    );
    let (st, v) = get_json(&s.url("/api/flags/nope")).await;
    assert_eq!(
        (st, v["error"]["error_type"].as_str()),
        (404, Some("unknown_route"))
    );
    s.shutdown().await;
}

#[tokio::test]
async fn enforcement_on_both_transports() {
    let s = Server::start(with_flags(
        r#"version = 1
[route.chat]
mode = "legacy"
allow = ["user:alice"]
[route.agent]
mode = "new"
deny = ["tenant:acme"]
[route.tools]
mode = "rollout"
percent = 100
strict = true
"#,
    ))
    .await;
    let post = |path: &str, user: Option<&str>| {
        let mut r = http().post(s.url(path)).json(&chat_body("x"));
        if let Some(u) = user {
            r = r.header("x-user-id", u);
        }
        r.send()
    };
    // legacy: HTTP refused, except for allowed subjects.
    let r = post(CHAT, Some("bob")).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["error_type"],
        "route_not_migrated"
    );
    assert_eq!(post(CHAT, Some("alice")).await.unwrap().status(), 200);
    // new: HTTP served; strict rollout at 100 %: HTTP served for a user, refused without one.
    assert_eq!(
        post("/api/ai/agent/execute", None).await.unwrap().status(),
        200
    );
    assert_eq!(
        post("/api/tools/test/execute", Some("u1"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post("/api/tools/test/execute", None)
            .await
            .unwrap()
            .status(),
        409
    );

    // Socket.IO: chat (legacy) served; agent (new) refused through the ack and the error event.
    let steps = json!([
        {"emit": "chat_message", "data": {"message": "still here", "session_id": "s"}, "ack": true},
        {"wait_for": "chat_complete", "count": 1},
        {"emit": "chat_service", "data": {"taskName": "t", "taskData": {}}, "ack": true},
        {"wait_for": "error", "count": 1},
        {"emit": "tool_execute", "data": {}, "ack": true}
    ]);
    let mut spec = sio_spec(&s, &["websocket"], steps);
    spec["auth"] = json!({"user_id": "u1"});
    let (lines, code) = Sio::spawn(Client::Node, spec.clone()).finish().await;
    assert_eq!(code, 0, "{lines:?}");
    let acks: Vec<&Value> = lines.iter().filter(|l| l["type"] == "ack").collect();
    assert!(acks[0]["data"]["request_id"].is_string());
    let refusal = &acks[1]["data"]["error"];
    assert_eq!(refusal["error_type"], "route_migrated");
    assert_eq!(refusal["http_path"], "/api/ai/agent/execute");
    let error_event = events_of(&lines)
        .into_iter()
        .find(|(n, _)| n == "error")
        .unwrap()
        .1;
    assert_eq!(error_event["data"]["error_type"], "route_migrated");
    assert_eq!(error_event["data"]["http_path"], "/api/ai/agent/execute");
    assert_eq!(
        acks[2]["data"]["error"]["error_type"], "route_migrated",
        "strict rollout refuses the other transport"
    );
    // A denied tenant keeps Socket.IO on a `new` route.
    spec["auth"] = json!({"user_id": "u1", "tenant_id": "acme"});
    spec["steps"] = json!([{"emit": "chat_service", "data": {"taskName": "t", "taskData": {}}, "ack": true}, {"wait_for": "end", "count": 1}]);
    let (lines, code) = Sio::spawn(Client::Python, spec).finish().await;
    assert_eq!(code, 0, "{lines:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn raising_percent_moves_a_user_and_a_flip_does_not_cut_live_streams() {
    let s = Server::start(with_flags(
        "version = 1\n[route.chat]\nmode = \"rollout\"\npercent = 0\nstrict = true\n",
    ))
    .await;
    let as_alice = || http().post(s.url(CHAT)).header("x-user-id", "alice");
    assert_eq!(
        as_alice()
            .json(&chat_body("x"))
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    // alice's bucket is 2265: 25 % takes her to HTTP.
    let r = admin(http().put(s.url("/admin/flags/chat")))
        .json(&json!({"mode": "rollout", "percent": 25, "strict": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let mut live =
        LineReader::open(as_alice().json(&json!({"options": {"chunks": 30, "interval_ms": 30}})))
            .await;
    assert_eq!(live.status, 200);
    live.until(|v| v["event"] == "chunk").await;
    // Kill switch mid-stream: the running stream finishes; new HTTP requests are refused.
    let r = admin(http().post(s.url("/admin/flags/chat/rollback")))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["flag"]["mode"], "legacy");
    let rest = live.rest().await;
    assert_eq!(rest.last().unwrap()["data"]["reason"], "completed");
    assert_eq!(rest.iter().filter(|v| v["event"] == "chunk").count(), 29);
    assert_eq!(
        as_alice()
            .json(&chat_body("x"))
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    s.shutdown().await;
}

#[tokio::test]
async fn admin_api_auth_versions_and_audit() {
    // No token configured: 403 for everything.
    let mut c = with_flags("version = 3\n[route.chat]\nmode = \"dual\"\n");
    c.admin.token = None;
    c.admin.tokens.clear();
    let off = Server::start(c).await;
    let r = http()
        .get(off.url("/admin/flags"))
        .bearer_auth("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    off.shutdown().await;

    let s = Server::start(with_flags("version = 3\n[route.chat]\nmode = \"dual\"\n")).await;
    assert_eq!(
        http()
            .get(s.url("/admin/flags"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http()
            .get(s.url("/admin/flags"))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let (st, v) = {
        let r = admin(http().get(s.url("/admin/flags")))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(st, 200);
    assert_eq!(v["version"], 3);
    assert_eq!(
        v["routes"]["chat"],
        json!({"mode": "dual", "percent": 0.0, "sticky": "user", "allow": [], "deny": [], "strict": false})
    );
    assert_eq!(v["reload"]["ok"], true);

    // Stale If-Match: 409. Concurrent PUTs at the same version: exactly one wins.
    let put = |body: Value, version: &str| {
        http()
            .put(s.url("/admin/flags/chat"))
            .bearer_auth("alice-token")
            .header("if-match", version)
            .json(&body)
            .send()
    };
    let r = put(json!({"mode": "new"}), "2").await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["error_type"],
        "version_conflict"
    );
    let racers: Vec<_> = (0..8)
        .map(|i| tokio::spawn(put(json!({"mode": "rollout", "percent": i}), "\"3\"")))
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.unwrap().unwrap().status().as_u16() {
            200 => won += 1,
            409 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(won, 1, "no lost update");
    let (_, v) = get_json_auth(&s, "/admin/flags").await;
    assert_eq!(v["version"], 4);
    // Identical table: same version, no audit line. Invalid table: 400.
    let current = v["routes"]["chat"].clone();
    let r = admin(http().put(s.url("/admin/flags/chat")))
        .json(&current)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 4);
    for bad in [
        json!({"mode": "sideways"}),
        json!({"mode": "rollout", "percent": 100.5}),
        json!({"mode": "dual", "allow": ["bob"]}),
        json!({"mode": "dual", "colour": 1}),
    ] {
        let r = admin(http().put(s.url("/admin/flags/chat")))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = admin(http().put(s.url("/admin/flags/nope")))
        .json(&json!({"mode": "dual"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Rollback by a named token with an actor.
    let r = http()
        .post(s.url("/admin/flags/chat/rollback"))
        .bearer_auth("alice-token")
        .header("x-actor", "pager")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["version"].as_u64(), v["flag"]["mode"].as_str()),
        (Some(5), Some("legacy"))
    );
    // The file on disk is the new one, and the audit is newest first.
    let file = std::fs::read_to_string(s.bridge.config().flags_dir.join("flags.toml")).unwrap();
    assert!(file.contains("version = 5"), "{file}");
    let (_, audit) = get_json_auth(&s, "/admin/audit?limit=10").await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["actor"], "pager (alice)");
    assert_eq!(entries[0]["version"], 5);
    assert_eq!(entries[0]["after"]["mode"], "legacy");
    assert_eq!(entries[1]["actor"], "alice");
    assert_eq!(entries[1]["before"]["mode"], "dual");
    assert!(entries[1]["ts"].as_str().unwrap().ends_with('Z'));
    let (_, audit) = get_json_auth(&s, "/admin/audit?limit=1").await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1);
    s.shutdown().await;
}

async fn get_json_auth(s: &Server, path: &str) -> (u16, Value) {
    let r = admin(http().get(s.url(path))).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn hand_edits_reload_and_invalid_ones_keep_the_last_good_flags() {
    let s = Server::start(with_flags("version = 1\n[route.chat]\nmode = \"dual\"\n")).await;
    let file = s.bridge.config().flags_dir.join("flags.toml");
    let mode = || async {
        let (_, v) = get_json(&s.url("/api/flags/chat")).await;
        v["mode"].as_str().unwrap().to_string()
    };
    // A valid edit takes effect within 2 s and is audited as `file`.
    let started = tokio::time::Instant::now();
    std::fs::write(&file, "version = 2\n[route.chat]\nmode = \"new\"\n").unwrap();
    eventually_async("the edit applies", || async { mode().await == "new" }).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let (_, audit) = get_json_auth(&s, "/admin/audit").await;
    assert_eq!(audit["entries"][0]["actor"], "file");
    assert_eq!(audit["entries"][0]["after"]["mode"], "new");

    let bad_edits = [
        ("bad TOML", "version = 3\n[route.chat\nmode = \"dual\"\n"),
        (
            "unknown mode",
            "version = 3\n[route.chat]\nmode = \"sideways\"\n",
        ),
        (
            "percent out of range",
            "version = 3\n[route.chat]\nmode = \"rollout\"\npercent = 101\n",
        ),
        (
            "too many decimals",
            "version = 3\n[route.chat]\nmode = \"rollout\"\npercent = 9.955\n",
        ),
        (
            "unknown route",
            "version = 3\n[route.chut]\nmode = \"dual\"\n",
        ),
        (
            "bad allow entry",
            "version = 3\n[route.chat]\nmode = \"dual\"\nallow = [\"alice\"]\n",
        ),
    ];
    for (what, text) in bad_edits {
        std::fs::write(&file, text).unwrap();
        eventually_async(what, || async {
            let (_, v) = get_json_auth(&s, "/admin/flags").await;
            v["reload"]["ok"] == false
        })
        .await;
        let (_, v) = get_json_auth(&s, "/admin/flags").await;
        assert!(
            v["reload"]["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
        assert_eq!(v["version"], 2, "{what}: the last good flags stay");
        assert_eq!(mode().await, "new", "{what}");
        // Back to a valid file between bad edits, so each is seen as a change.
        std::fs::write(&file, "version = 2\n[route.chat]\nmode = \"new\"\n").unwrap();
        eventually_async("recovery", || async {
            get_json_auth(&s, "/admin/flags").await.1["reload"]["ok"] == true
        })
        .await;
    }
    // A deleted file is an invalid edit too, never "no flags".
    std::fs::remove_file(&file).unwrap();
    eventually_async("deletion is reported", || async {
        get_json_auth(&s, "/admin/flags").await.1["reload"]["ok"] == false
    })
    .await;
    assert_eq!(mode().await, "new");
    assert_eq!(
        http()
            .post(s.url(CHAT))
            .json(&chat_body("x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.shutdown().await;
}

/// Runs `switchyard flags ARGS --url BASE` with the admin token in the environment.
async fn cli(base: &str, args: &[&str], token: Option<&str>) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("flags")
        .args(args)
        .arg("--url")
        .arg(base)
        .env_remove("SWITCHYARD_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("SWITCHYARD_ADMIN_TOKEN", t);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn the_flags_cli_drives_the_admin_api() {
    let s = Server::start(with_flags("version = 1\n[route.chat]\nmode = \"dual\"\n")).await;
    let base = s.base();
    let set = [
        "set",
        "chat",
        "--mode",
        "rollout",
        "--percent",
        "10",
        "--allow",
        "user:alice",
        "--actor",
        "deploy",
    ];
    let (ok, out, err) = cli(&base, &set, Some(TOKEN)).await;
    assert!(ok, "{out}{err}");
    let (ok, out, _) = cli(&base, &["list"], Some(TOKEN)).await;
    assert!(ok);
    assert!(
        out.contains("chat") && out.contains("rollout") && out.contains("user:alice"),
        "{out}"
    );
    let (ok, out, _) = cli(&base, &["rollback", "chat", "--json"], Some(TOKEN)).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["flag"]["mode"],
        "legacy"
    );
    let (ok, out, _) = cli(&base, &["history", "--limit", "5"], Some(TOKEN)).await;
    assert!(ok);
    assert!(out.contains("deploy"), "{out}");
    // Errors: one line on stderr, non-zero exit.
    let (ok, _, err) = cli(&base, &["list"], Some("wrong")).await;
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("403"), "{err}");
    let (ok, _, err) = cli(&base, &["set", "chat", "--mode", "sideways"], Some(TOKEN)).await;
    assert!(!ok);
    assert!(err.contains("sideways"), "{err}");
    let (ok, _, err) = cli(&base, &["list"], None).await;
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    s.shutdown().await;
}
