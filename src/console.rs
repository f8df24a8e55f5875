//! The ops console: a static page served at `/console/` from files embedded in the binary
//! (`console/` in the repository; no build step, nothing fetched from elsewhere).
//!
//! Owns the page's files, their content types and the headers that lock the page down (a
//! strict `Content-Security-Policy`: everything from the bridge itself, no inline script,
//! no framing). It must not hold policy or data: the page reads and changes everything
//! through the admin API, the evaluation API and `GET /admin/stats`, with the operator's
//! token, which this module never sees.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::bridge::Bridge;
use crate::error::ApiError;
use crate::routes::paths::CONSOLE;

/// Where the console is served (`/console` redirects here).
pub const PATH: &str = "/console/";

/// Everything the page may load, and from where: the bridge only.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The page's files: (name, content type, bytes).
const FILES: [(&str, &str, &[u8]); 4] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../console/index.html"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/console.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../console/favicon.svg"),
    ),
];

pub fn router() -> Router<Bridge> {
    Router::new()
        .route(CONSOLE, get(|| async { Redirect::permanent(PATH) }))
        .route(PATH, get(|| async { file("index.html") }))
        .route(
            &format!("{CONSOLE}/{{file}}"),
            get(|Path(f): Path<String>| async move { file(&f) }),
        )
}

/// The embedded file `name`, with its content type and the page's security headers.
fn file(name: &str) -> Response {
    let Some((_, content_type, bytes)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return ApiError::UnknownRoute(format!("GET {PATH}{name}")).into_response();
    };
    let mut resp = (StatusCode::OK, *bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Always revalidated: a new binary serves a new page at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_with_its_type_and_the_policy() {
        for (name, ty, bytes) in FILES {
            let r = file(name);
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], ty);
            assert!(
                r.headers()[header::CONTENT_SECURITY_POLICY]
                    .to_str()
                    .unwrap()
                    .starts_with("default-src 'self'")
            );
            assert!(!bytes.is_empty());
        }
        assert_eq!(file("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(file("nope.js").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn no_route_may_take_the_console_path() {
        let text =
            "[[route]]\nname = \"r\"\nhttp = \"/console/x\"\nengine = { kind = \"script\" }\n";
        let e = crate::routes::Routes::parse(text, "r.toml").unwrap_err();
        assert!(e.to_string().contains("/console"), "{e}");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, _, bytes) in FILES {
            let text = String::from_utf8_lossy(bytes);
            for bad in [
                "src=\"http",
                "href=\"http",
                "url(http",
                "@import",
                "<script>",
                " style=\"",
            ] {
                assert!(
                    !text.contains(bad),
                    "{name} contains {bad:?}: the page must load only from the bridge"
                );
            }
        }
    }
}
