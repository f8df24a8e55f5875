//! Bad input and hostile clients: resume edge cases, refused tokens on both transports,
//! and no secret in the logs.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::support::eventually_within;

#[tokio::test]
async fn resume_edge_cases() {
    let mut c = config();
    c.replay.retention_secs = 1;
    let s = Server::start(c).await;
    let all = post_ndjson(
        &s.url(CHAT),
        &json!({"request_id": "edge", "messages": [{"role": "user", "content": "a b"}]}),
    )
    .await;
    let last = all.len() as i64 - 1;
    // `after` beyond the end: nothing left, the response just closes (SSE: 204).
    let r = http()
        .get(s.url(&format!("/api/streams/edge?after={}", last + 50)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "");
    let r = http()
        .get(s.url(&format!("/api/streams/edge?after={}", last + 50)))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // -1 means from the start; anything lower or not a number is a 400.
    assert_eq!(
        parse_ndjson(&get_text(&s.url("/api/streams/edge?after=-1")).await),
        all
    );
    for bad in ["-2", "abc", "1.5", "99999999999999999999999"] {
        let r = http()
            .get(s.url(&format!("/api/streams/edge?after={bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "after={bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["error_type"], "invalid_request");
    }
    let r = http()
        .get(s.url("/api/streams/edge"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // After the retention time the stream is gone: 404.
    let hub = s.bridge.hub().clone();
    eventually("the finished stream is dropped after its retention", || {
        hub.held() == 0
    })
    .await;
    let r = http()
        .get(s.url("/api/streams/edge?after=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["error_type"],
        "unknown_stream"
    );
    s.shutdown().await;
}

/// SPEC section 3: a stream whose every subscriber was sent its `end` is released after
/// `replay.delivered_retention_secs`; one a subscriber left early stays resumable for the
/// whole `replay.retention_secs`, every event in it.
#[tokio::test]
async fn a_stream_read_to_its_end_is_released_early_one_left_early_is_kept() {
    let mut c = config();
    c.replay.retention_secs = 60;
    c.replay.delivered_retention_secs = 5;
    // The stream whose reader hangs up runs on to its end.
    c.replay.orphan_grace_secs = 30;
    let s = Server::start(c).await;
    let delivered = post_ndjson(
        &s.url(CHAT),
        &json!({"request_id": "read-all", "messages": [{"role": "user", "content": "a b"}]}),
    )
    .await;
    assert_eq!(delivered.last().unwrap()["event"], "end");
    let finished_at = std::time::Instant::now();
    // This reader takes the first chunk and hangs up; the stream runs on to its end.
    let mut early = LineReader::open(http().post(s.url(CHAT)).json(&json!({
        "request_id": "left-early",
        "options": {"chunks": 20, "interval_ms": 10},
    })))
    .await;
    early.until(|v| v["event"] == "chunk").await;
    drop(early);
    let hub = s.bridge.hub().clone();
    eventually("the stream left early has ended", || {
        hub.get("left-early").is_some_and(|st| st.is_ended())
    })
    .await;
    eventually_within(
        Duration::from_secs(15),
        "the stream read to its end is released",
        || {
            let gone = hub.get("read-all").is_none();
            std::future::ready(gone)
        },
    )
    .await;
    assert!(
        finished_at.elapsed() >= Duration::from_secs(5),
        "released before 5 s"
    );
    let r = http()
        .get(s.url("/api/streams/read-all?after=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The other one is still whole: from the start to its `end`.
    let resumed = parse_ndjson(&get_text(&s.url("/api/streams/left-early")).await);
    assert_eq!(check_rules(&resumed).len(), 20);
    assert_eq!(resumed.last().unwrap()["data"]["reason"], "completed");
    assert!(hub.retained_bytes() > 0);
    s.shutdown().await;
}

fn token(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn refused_tokens_on_both_transports() {
    let mut c = config();
    c.auth.jwt_secret = Some("s3cret".into());
    c.auth.issuer = Some("https://id.example".into());
    c.auth.audience = Some("switchyard".into());
    let s = Server::start(c).await;
    let good =
        json!({"sub": "u", "iss": "https://id.example", "aud": "switchyard", "exp": now() + 600});
    let with = |patch: Value| {
        let mut claims = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        token("s3cret", claims)
    };
    let alg_none = {
        use base64_url as b64;
        format!(
            "{}.{}.",
            b64::encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64::encode(&good.to_string())
        )
    };
    let refused = [
        ("alg none", alg_none),
        ("wrong signature", token("other", good.clone())),
        ("expired", with(json!({"exp": now() - 600}))),
        ("not yet valid", with(json!({"nbf": now() + 600}))),
        ("wrong issuer", with(json!({"iss": "https://evil.example"}))),
        ("wrong audience", with(json!({"aud": "someone-else"}))),
        ("garbage", "not.a.jwt".to_string()),
    ];
    for (what, t) in &refused {
        let r = http()
            .post(s.url(CHAT))
            .bearer_auth(t)
            .json(&chat_body("x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "HTTP, {what}");
        let mut spec = sio_spec(&s, &["websocket"], json!([]));
        spec["auth"] = json!({"token": t});
        let (lines, code) = Sio::spawn(Client::Node, spec).finish().await;
        assert_eq!(code, 3, "Socket.IO, {what}: {lines:?}");
        let refusal = lines.iter().find(|l| l["type"] == "connect_error").unwrap();
        assert!(
            refusal["message"]
                .as_str()
                .unwrap()
                .starts_with("unauthorized"),
            "{what}: {refusal}"
        );
    }
    let r = http()
        .post(s.url(CHAT))
        .bearer_auth(with(json!({})))
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.shutdown().await;
}

/// base64url without padding, enough for hand-made tokens.
mod base64_url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(input: &str) -> String {
        let bytes = input.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test]
async fn no_secret_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "jwt-secret-7f3a";
    let admin = "admin-token-91c2";
    let mut bridge = Spawn::new()
        .current_dir(dir.path())
        .env("SWITCHYARD_AUTH__JWT_SECRET", secret)
        .env("SWITCHYARD_ADMIN__TOKEN", admin)
        .log("trace")
        .capture_output()
        .start()
        .await;
    let base = bridge.base();
    let jwt = token(secret, json!({"sub": "alice", "exp": now() + 600}));
    let r = http()
        .post(format!("{base}{CHAT}"))
        .bearer_auth(&jwt)
        .json(&chat_body("hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let r = http()
        .post(format!("{base}{CHAT}"))
        .bearer_auth("wrong-token-value")
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(format!("{base}/admin/flags"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spec = json!({"url": base, "transports": ["polling"], "auth": {"token": jwt}, "steps": [
        {"emit": "chat_message", "data": {"message": "hi", "session_id": "s"}, "ack": true},
        {"wait_for": "chat_complete", "count": 1}
    ]});
    let (lines, code) = Sio::spawn(Client::Node, spec).finish().await;
    assert_eq!(code, 0, "{lines:?}");
    bridge.sigterm();
    bridge.exit_within(Duration::from_secs(20)).await;
    let log = bridge.output().await;
    assert!(
        log.contains("stream"),
        "the trace log was captured: {} bytes",
        log.len()
    );
    for secret in [secret, admin, jwt.as_str(), "wrong-token-value"] {
        assert!(!log.contains(secret), "a secret reached the log: {secret}");
    }
    let signature = jwt.rsplit('.').next().unwrap();
    assert!(!log.contains(signature));
}
