//! `Routes::parse` (src/routes/mod.rs) on any text: a typed error listing at least one
//! problem, or routes the bridge can actually serve. For a file that parses, builds the
//! whole service as `switchyard serve` does at start-up (`server::app`: the bridge, its
//! metrics, the HTTP router with one POST per route, the Socket.IO namespaces): SPEC
//! section 2 says a bad routes file stops start-up with a message, never a panic.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use switchyard::routes::{RequestContext, Routes};
use switchyard::{Bridge, Config};

/// A flags directory whose `flags.toml` is valid for any routes (no route tables).
static FLAGS_DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("switchyard-fuzz-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary flags directory");
    std::fs::write(dir.join("flags.toml"), "version = 1\n").expect("a temporary flags file");
    dir
});

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let routes = match Routes::parse(text, "routes.toml") {
        Ok(routes) => routes,
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without a problem");
            for p in &e.problems {
                assert_eq!(p.file, "routes.toml");
                assert!(!p.message.is_empty());
            }
            let _ = e.to_string();
            return;
        }
    };
    assert!(!routes.is_empty(), "a valid file has at least one route");
    assert!(routes.namespaces().iter().any(|n| n == "/"));
    for r in routes.iter() {
        assert!(routes.get(&r.name).is_some());
        if let Some(sio) = &r.socketio
            && let Some(t) = &sio.request
        {
            let _ = t.render_request(&RequestContext {
                payload: &json!({"message": "hi"}),
                auth: &json!({"token": "t"}),
            });
        }
    }
    let config = Config {
        flags_dir: FLAGS_DIR.clone(),
        ..Config::default()
    };
    let _rt = RUNTIME.enter();
    let bridge =
        Bridge::new(config, routes).expect("flags without route tables load for any routes");
    let (_router, _io) = switchyard::server::app(bridge);
});
