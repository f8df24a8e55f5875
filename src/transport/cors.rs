//! Cross-origin policy for browsers: one middleware in front of everything.
//!
//! A request without `Origin` (every non-browser client) or from the bridge's own origin
//! passes untouched. A cross-origin request passes only when its origin is listed in
//! `cors.allowed_origins` and it is not for the admin API; it then gets the CORS response
//! headers, and a preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered
//! here. Everything else cross-origin is refused with 403 before it reaches a handler, so
//! a page on another site can neither start a stream (and spend engine time) nor open a
//! Socket.IO connection, whatever the browser would do with the response. This module
//! decides on origins only: it never reads bodies, routes or identities.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::{CorsConfig, origin_authority as authority};
use crate::error::ApiError;

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The allowed origins, ready for lookups.
#[derive(Clone, Debug, Default)]
pub struct Cors {
    any: bool,
    origins: Arc<HashSet<String>>,
}

impl Cors {
    pub fn new(config: &CorsConfig) -> Cors {
        Cors {
            any: config.allowed_origins.iter().any(|o| o == "*"),
            origins: Arc::new(
                config
                    .allowed_origins
                    .iter()
                    .filter(|o| *o != "*")
                    .map(|o| o.to_ascii_lowercase())
                    .collect(),
            ),
        }
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.contains(&origin.to_ascii_lowercase())
    }
}

/// Whether `origin` is the bridge's own origin as the client addressed it (`Host`). A
/// default port may be spelled out on one side and left out on the other.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let (Some(auth), Some(host)) = (
        authority(origin),
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    ) else {
        return false;
    };
    let strip = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        match origin.split_once("://").map(|(s, _)| s) {
            Some("http") | Some("ws") => a.strip_suffix(":80").map(str::to_string),
            Some("https") | Some("wss") => a.strip_suffix(":443").map(str::to_string),
            _ => None,
        }
        .unwrap_or(a)
    };
    strip(auth) == strip(host)
}

/// The middleware (`axum::middleware::from_fn_with_state(cors, cors::guard)`).
pub async fn guard(State(cors): State<Cors>, req: Request, next: Next) -> Response {
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next.run(req).await;
    };
    let origin_text = origin.to_str().unwrap_or_default();
    // `Origin: null` (sandboxed frames, file:// pages) is never the bridge's own origin.
    if origin_text != "null" && same_origin(origin_text, req.headers()) {
        return next.run(req).await;
    }
    if req.uri().path().starts_with(crate::routes::paths::ADMIN) {
        return ApiError::Forbidden("the admin API is not available cross-origin".into())
            .into_response();
    }
    if origin_text == "null" || !cors.allows(origin_text) {
        return ApiError::Forbidden(format!(
            "cross-origin requests from {origin_text:?} are not allowed (cors.allowed_origins)"
        ))
        .into_response();
    }
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
        allow(h, origin);
        h.append(
            header::VARY,
            HeaderValue::from_static(
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        return resp;
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    allow(h, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-request-id"),
    );
    resp
}

fn allow(h: &mut HeaderMap, origin: HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::is_origin;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        m
    }

    #[test]
    fn origins_are_scheme_and_authority_only() {
        assert!(is_origin("https://app.example.com"));
        assert!(is_origin("http://127.0.0.1:3000"));
        assert!(!is_origin("app.example.com"));
        assert!(!is_origin("https://app.example.com/"));
        assert!(!is_origin("https://app.example.com/path"));
        assert!(!is_origin("https://"));
        assert!(!is_origin("https://user@app.example.com"));
    }

    #[test]
    fn same_origin_compares_the_authority_with_host() {
        assert!(same_origin(
            "http://127.0.0.1:8080",
            &host("127.0.0.1:8080")
        ));
        assert!(same_origin(
            "https://Bridge.Example.com",
            &host("bridge.example.com")
        ));
        assert!(same_origin(
            "https://bridge.example.com:443",
            &host("bridge.example.com")
        ));
        assert!(same_origin(
            "http://bridge.example.com",
            &host("bridge.example.com:80")
        ));
        assert!(!same_origin(
            "http://127.0.0.1:3000",
            &host("127.0.0.1:8080")
        ));
        assert!(!same_origin(
            "https://evil.example",
            &host("bridge.example.com")
        ));
        assert!(!same_origin("http://127.0.0.1:8080", &HeaderMap::new()));
        assert!(!same_origin("127.0.0.1:8080", &host("127.0.0.1:8080")));
    }

    #[test]
    fn allowed_origins_match_exactly_or_any() {
        let listed = Cors::new(&CorsConfig {
            allowed_origins: vec!["https://App.example.com".into()],
        });
        assert!(listed.allows("https://app.example.com"));
        assert!(!listed.allows("https://app.example.com.evil.example"));
        assert!(!listed.allows("http://app.example.com"));
        assert!(!Cors::default().allows("https://app.example.com"));
        let any = Cors::new(&CorsConfig {
            allowed_origins: vec!["*".into()],
        });
        assert!(any.allows("https://anything.example"));
    }
}
