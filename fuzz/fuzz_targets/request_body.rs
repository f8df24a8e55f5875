//! What the HTTP streaming endpoints make of client bytes before anything starts:
//! `transport::http::decode_body` (the POST body → a `StreamRequest`), the route engine's
//! `prepare` (options checked against the route's maxima, the upstream request built),
//! `transport::http::resume_after` (`?after=` / `Last-Event-ID`) and
//! `Bridge::resume_from` (the first seq a resume reads). Invalid input must come back as
//! 400 `invalid_request`, never a panic.
//!
//! Input: `<selector byte><after>[|<last-event-id>]\n<body>`. The selector picks the route
//! (low bits) and SSE (0x80); `<after>` is absent when the header is only the selector.

#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::Bridge;
use switchyard::engine::script::{ScriptEngine, ScriptLimits};
use switchyard::engine::{Caller, Engine, EngineError, EngineSpec};
use switchyard::error::ApiError;
use switchyard::request::{MAX_SESSION_ID_LEN, RequestId, Subject, Transport};
use switchyard::routes::{Route, Routes};
use switchyard::transport::http::{decode_body, resume_after};

/// The shipped routes plus one route per upstream engine kind.
const UPSTREAMS: &str = r#"
[[route]]
name = "up"
http = "/up"
engine = { kind = "ndjson", url = "http://127.0.0.1:9/up" }

[[route]]
name = "oai"
http = "/oai"
engine = { kind = "openai", base_url = "http://127.0.0.1:9/v1", model = "m" }

[[route]]
name = "oll"
http = "/oll"
engine = { kind = "ollama", base_url = "http://127.0.0.1:9", model = "m" }
"#;

static ROUTES: LazyLock<Vec<(Arc<Route>, Arc<dyn Engine>)>> = LazyLock::new(|| {
    let shipped = include_str!("../../routes.toml");
    let mut out = Vec::new();
    for (text, file) in [(shipped, "routes.toml"), (UPSTREAMS, "upstreams.toml")] {
        let routes = Routes::parse(text, file).expect("the fuzz target's routes are valid");
        for r in routes.iter() {
            out.push((r.clone(), r.engine.build()));
        }
    }
    out
});

fn invalid_request(e: &ApiError) {
    assert_eq!(e.http_status(), 400, "{e:?}");
    assert_eq!(e.error_type(), "invalid_request", "{e:?}");
}

fuzz_target!(|data: &[u8]| {
    let routes = &*ROUTES;
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Some((&selector, rest)) = header.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let (route, engine) = &routes[usize::from(selector & 0x7f) % routes.len()];
    let sse = selector & 0x80 != 0;
    let transport = if sse {
        Transport::Sse
    } else {
        Transport::Ndjson
    };

    // The POST body.
    let subject = Subject {
        user: Some("u1".into()),
        ..Subject::default()
    };
    match decode_body(route.clone(), body, subject, transport) {
        Ok(req) => {
            let map = req.input.as_object().expect("the input is an object");
            match map.get("request_id") {
                Some(Value::String(s)) => {
                    let id = req.request_id.as_ref().expect("request_id kept");
                    assert_eq!(id.as_str(), s);
                    assert!(RequestId::parse(id.as_str()).is_ok());
                    assert!(s.len() <= RequestId::MAX_LEN);
                }
                _ => assert!(req.request_id.is_none()),
            }
            if let Some(s) = &req.session_id {
                assert!(!s.is_empty() && s.len() <= MAX_SESSION_ID_LEN);
                assert!(!s.chars().any(char::is_control));
                assert_eq!(req.subject.session.as_deref(), Some(&**s));
            }
            assert!(matches!(
                map.get("options"),
                None | Some(Value::Null) | Some(Value::Object(_))
            ));
            assert_eq!(req.transport, transport);

            // What `Bridge::start` asks the engine before anything starts.
            match engine.prepare(&req.input, &Caller::default()) {
                Ok(_job) => {}
                Err(EngineError::InvalidOption { option, .. }) => assert!(!option.is_empty()),
                Err(EngineError::Failed { .. }) => {}
            }
            if let EngineSpec::Script(limits) = &route.engine {
                check_script_plan(limits, &req.input);
            }
        }
        Err(e) => invalid_request(&e),
    }

    // The resume position.
    let (after, last_event_id) = match rest.split_once('|') {
        Some((a, l)) => (Some(a), Some(l)),
        None if rest.is_empty() => (None, None),
        None => (Some(rest), None),
    };
    match resume_after(last_event_id, after, sse) {
        Ok(position) => match Bridge::resume_from(position) {
            Ok(from) => {
                let expected = position.map_or(0, |a| i128::from(a) + 1);
                assert_eq!(i128::from(from), expected, "resume from after {position:?}");
            }
            Err(e) => {
                invalid_request(&e);
                assert!(position.is_some_and(|a| a < -1), "{position:?} refused");
            }
        },
        Err(e) => invalid_request(&e),
    }
});

/// The script engine's options: over a maximum is refused naming the option, never clamped.
fn check_script_plan(limits: &ScriptLimits, input: &Value) {
    let plan = ScriptEngine::new(limits.clone()).plan(input);
    let option = |name: &str| {
        input
            .get("options")
            .and_then(|o| o.get(name))
            .and_then(Value::as_u64)
    };
    match plan {
        Ok(plan) => {
            if let Some(n) = option("chunks") {
                assert_eq!(plan.chunks, Some(n), "chunks clamped");
            }
            if let Some(n) = option("chunk_bytes") {
                assert_eq!(plan.chunk_bytes, n, "chunk_bytes clamped");
            }
            assert!(plan.chunks.is_none_or(|n| n <= limits.max_chunks));
            assert!(plan.chunk_bytes >= 1 && plan.chunk_bytes <= limits.max_chunk_bytes);
            assert!(plan.interval_ms <= limits.max_interval_ms);
            assert!(plan.tool_calls <= limits.max_tool_calls);
        }
        Err(EngineError::InvalidOption { option, message }) => {
            assert!(!option.is_empty() && !message.is_empty());
        }
        Err(e) => panic!("the script plan failed with {e:?}"),
    }
}
