//! The ops console's server side: the embedded page and its headers, `GET /admin/stats`
//! (auth and JSON shape, counters moving with real traffic) and
//! `POST /admin/flags/{route}/preview`. The page itself is driven in Chromium by
//! `tests/console/`.

use serde_json::{Value, json};

use crate::common::*;

fn with_tokens() -> switchyard::Config {
    let mut c = config();
    c.flags_dir = flags_dir("version = 3\n[route.chat]\nmode = \"dual\"\n");
    c.admin.tokens.insert("alice".into(), "alice-token".into());
    c
}

#[tokio::test]
async fn the_console_page_is_served_locked_down() {
    let s = Server::start(with_tokens()).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client.get(s.url("/console")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 308);
    assert_eq!(r.headers()["location"], "/console/");
    for (path, ty) in [
        ("/console/", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
    ] {
        let r = client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ty, "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }
    let r = client.get(s.url("/console/nope.js")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    s.shutdown().await;
}

#[tokio::test]
async fn stats_need_a_token_and_count_each_transport() {
    let s = Server::start(with_tokens()).await;
    let stats = s.url("/admin/stats");
    let r = http().get(&stats).send().await.unwrap();
    assert_eq!(error_of(r).await, (401, "unauthorized".into()));
    let r = http()
        .get(&stats)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (403, "forbidden".into()));
    // Cross-origin, even with the token: refused by the guard.
    let r = http()
        .get(&stats)
        .bearer_auth("alice-token")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    for user in ["u1", "u2", "u3"] {
        let r = http()
            .post(s.url("/api/ai/chat/unified"))
            .header("x-user-id", user)
            .json(&chat_body("one two three"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.unwrap();
    }
    let r = http()
        .post(s.url("/api/ai/chat/unified"))
        .header("accept", "text/event-stream")
        .header("x-user-id", "u4")
        .json(&chat_body("hello"))
        .send()
        .await
        .unwrap();
    r.text().await.unwrap();

    let v: Value = http()
        .get(&stats)
        .bearer_auth("alice-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["actor"], "alice");
    assert_eq!(v["flags_version"], 3);
    let chat = &v["routes"]["chat"];
    assert_eq!(chat["mode"], "dual");
    assert_eq!(chat["transports"]["ndjson"]["started"], 3);
    assert_eq!(chat["transports"]["sse"]["started"], 1);
    assert_eq!(chat["transports"]["socketio"]["started"], 0);
    assert_eq!(chat["transports"]["ndjson"]["finished"]["completed"], 3);
    assert_eq!(chat["transports"]["ndjson"]["error_ratio"], 0.0);
    assert_eq!(chat["http_share"], 1.0);
    assert_eq!(chat["recent_subjects"], 4);
    assert_eq!(chat["evaluations"], json!({"http": 0, "socketio": 4}));
    let fe = &chat["transports"]["ndjson"]["first_event"];
    assert_eq!(fe["count"], 3);
    assert!(fe["p95_seconds"].as_f64().unwrap() > 0.0, "{fe}");
    assert_eq!(
        chat["transports"]["socketio"]["first_event"]["p50_seconds"],
        Value::Null,
        "no sample: no made-up latency"
    );
    assert_eq!(v["routes"]["agent"]["transports"]["sse"]["active"], 0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_preview_estimates_who_moves_and_changes_nothing() {
    let s = Server::start(with_tokens()).await;
    for i in 0..200 {
        let r = http()
            .post(s.url("/api/ai/chat/unified"))
            .header("x-user-id", format!("user-{i}"))
            .json(&chat_body("hi"))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap();
    }
    let preview = |body: Value| {
        let url = s.url("/admin/flags/chat/preview");
        async move {
            let r = http()
                .post(url)
                .bearer_auth("alice-token")
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, v) = preview(json!({"mode": "rollout", "percent": 50})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], 3);
    assert_eq!(v["before"]["mode"], "dual");
    assert_eq!(v["after"]["percent"], 50.0);
    let m = &v["recent"];
    assert_eq!(m["subjects"], 200);
    assert_eq!(m["to_socketio"], 0);
    let share = m["share"].as_f64().unwrap();
    assert!((0.35..0.65).contains(&share), "{m}");
    let (st, v) = preview(json!({"mode": "rollout", "percent": 101})).await;
    assert_eq!(
        (st, v["error"]["error_type"].as_str()),
        (400, Some("invalid_request"))
    );
    let flags: Value = http()
        .get(s.url("/admin/flags"))
        .bearer_auth("alice-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(flags["version"], 3, "a preview changes nothing");
    s.shutdown().await;
}
