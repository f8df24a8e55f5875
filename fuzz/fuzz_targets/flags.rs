//! The flags model (src/flags/model.rs): `Flags::parse_toml` on any text and
//! `RouteFlag::from_json` on any JSON. Both give a typed error listing at least one
//! problem, or flags that survive the round trips the bridge relies on (`to_toml` →
//! `parse_toml` for the file it writes, `to_json` → `from_json` for the admin API), and
//! that evaluate and enforce for any subject without panicking.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::flags::{Flags, RouteFlag, Target};
use switchyard::request::{Subject, Transport};

/// Route names a flags file may use. Real route names are `[a-z][a-z0-9_-]*`; the odd ones
/// here make `to_toml` quote its keys.
const KNOWN: &[&str] = &["chat", "agent", "tools", "a.b", "dé", "x y", "\"q\"", ""];

fn subjects() -> Vec<Subject> {
    let s = |u: Option<&str>, se: Option<&str>, t: Option<&str>| Subject {
        user: u.map(str::to_string),
        session: se.map(str::to_string),
        tenant: t.map(str::to_string),
    };
    vec![
        s(None, None, None),
        s(Some("alice"), Some("s1"), Some("acme")),
        s(Some("user-42"), None, None),
        s(None, Some("s:2"), Some("é")),
        s(Some(""), Some(""), Some("")),
    ]
}

fn check_evaluation(flags: &Flags) {
    for name in KNOWN.iter().copied().chain(["unknown"]) {
        let flag = flags.route(name);
        for subject in subjects() {
            let ev = flags.evaluate(name, &subject);
            assert_eq!(ev, flag.evaluate(name, &subject));
            if let Some(b) = ev.bucket {
                assert!(b < 10_000, "bucket {b}");
                let http = b < u32::from(flag.percent.basis_points());
                assert_eq!(ev.transport == Target::Http, http, "{ev:?} {flag:?}");
            }
            for used in [Transport::Socketio, Transport::Ndjson, Transport::Sse] {
                let _ = flag.enforce(name, &subject, used);
            }
        }
    }
}

fn check_toml_round_trip(flags: &Flags) {
    let text = flags.to_toml();
    match Flags::parse_toml(&text, KNOWN) {
        Ok(back) => assert_eq!(
            &back, flags,
            "to_toml → parse_toml changed the flags:\n{text}"
        ),
        Err(e) => panic!("parse_toml refuses what to_toml wrote:\n{text}\n{e}"),
    }
}

fn check_json_round_trip(flag: &RouteFlag) {
    let json = flag.to_json();
    match RouteFlag::from_json(&json) {
        Ok(back) => assert_eq!(&back, flag, "to_json → from_json changed the flag: {json}"),
        Err(e) => panic!("from_json refuses what to_json wrote: {json}\n{e}"),
    }
    let via_serde = serde_json::to_value(flag).expect("a flag serialises");
    assert_eq!(via_serde, json, "Serialize and to_json disagree");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Flags::parse_toml(text, KNOWN) {
        Ok(flags) => {
            check_toml_round_trip(&flags);
            for flag in flags.routes.values() {
                check_json_round_trip(flag);
            }
            check_evaluation(&flags);
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without a problem");
            let _ = e.to_string();
        }
    }
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        match RouteFlag::from_json(&value) {
            Ok(flag) => {
                check_json_round_trip(&flag);
                let flags = Flags {
                    version: 1,
                    routes: BTreeMap::from([("chat".to_string(), flag)]),
                };
                check_toml_round_trip(&flags);
                check_evaluation(&flags);
            }
            Err(e) => {
                assert!(!e.problems.is_empty(), "an error without a problem");
                let _ = e.to_string();
            }
        }
    }
});
