//! The route template language (src/routes/template.rs): compile any JSON as a request
//! and as an emit template, render it against any JSON payload / event data.
//!
//! Input: up to three JSON documents back to back (`<template> <payload> <auth>`); input
//! that does not start with a JSON document is skipped. Checks, besides "never panics":
//! rendering is deterministic; `"$"` renders the payload itself; the handshake token is
//! never rendered; a template that says it does not use `$.now` renders the same whatever
//! the clock.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::routes::{EmitContext, RequestContext, Template};

/// The handshake token given to every request render; it must never come out.
const SECRET: &str = "tok-9f2c41d7-never-rendered";

fuzz_target!(|data: &[u8]| {
    let mut docs = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    let Some(Ok(template)) = docs.next() else {
        return;
    };
    let payload = docs.next().and_then(Result::ok).unwrap_or(Value::Null);
    let auth = docs.next().and_then(Result::ok).unwrap_or(Value::Null);
    let input_has_secret = data.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());

    match Template::compile_request(&template) {
        Ok(t) => {
            let mut auth = auth.clone();
            if let Value::Object(map) = &mut auth {
                map.insert("token".into(), Value::from(SECRET));
            }
            let ctx = RequestContext {
                payload: &payload,
                auth: &auth,
            };
            let out = t.render_request(&ctx);
            assert_eq!(out, t.render_request(&ctx), "rendering is deterministic");
            if template == Value::from("$") {
                assert_eq!(out, payload, "`$` is the whole payload");
            }
            let text = serde_json::to_string(&out).unwrap_or_default();
            if !input_has_secret {
                assert!(
                    !text.contains(SECRET),
                    "the handshake token was rendered: {text}"
                );
            }
        }
        Err(e) => {
            assert!(!e.location.is_empty() && !e.message.is_empty(), "{e:?}");
            let _ = e.to_string();
        }
    }

    match Template::compile_emit(&template) {
        Ok(t) => {
            let contexts = [
                ("chunk", Some(3), Some("s1")),
                ("heartbeat", None, None),
                ("end", Some(u64::MAX), Some("")),
            ];
            for (event, seq, session_id) in contexts {
                let ctx = EmitContext {
                    event,
                    seq,
                    data: &payload,
                    request_id: "req-1",
                    session_id,
                    route: "chat",
                    now: "2026-11-22T00:00:00.000Z",
                };
                let out = t.render_emit(&ctx);
                assert_eq!(out, t.render_emit(&ctx), "rendering is deterministic");
                if !t.uses_now() {
                    let later = EmitContext {
                        now: "2026-11-22T00:00:01.000Z",
                        ..ctx
                    };
                    assert_eq!(out, t.render_emit(&later), "`uses_now` is false");
                }
                let _ = serde_json::to_vec(&out);
            }
        }
        Err(e) => {
            assert!(!e.location.is_empty() && !e.message.is_empty(), "{e:?}");
            let _ = e.to_string();
        }
    }
});
