//! The admin API (SPEC section 5): read, change and roll back flags, read the audit log.
//!
//! Owns bearer-token checks for ops (named tokens, constant-time comparison) and the
//! mapping of the flags store's results to HTTP. It must not touch the flags file itself
//! (the store does) nor serve anything cross-origin.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bridge::Bridge;
use crate::error::ApiError;
use crate::flags::RouteFlag;
use crate::flags::store::{AuditEntry, ChangeError, Changed, ReloadStatus};
use crate::routes::paths::ADMIN;
use crate::stats::Movement;
use std::collections::BTreeMap;

/// Most audit entries one call returns.
const MAX_AUDIT: usize = 1000;

pub fn router() -> Router<Bridge> {
    Router::new()
        .route(&format!("{ADMIN}/flags"), get(list))
        .route(&format!("{ADMIN}/flags/{{route}}"), axum::routing::put(put))
        .route(&format!("{ADMIN}/flags/{{route}}/rollback"), post(rollback))
        .route(&format!("{ADMIN}/flags/{{route}}/preview"), post(preview))
        .route(&format!("{ADMIN}/audit"), get(audit))
        .route(&format!("{ADMIN}/stats"), get(stats))
}

/// Checks the bearer token; returns the actor (the header `x-actor`, else the token's
/// configured name).
fn authorize(b: &Bridge, headers: &HeaderMap) -> Result<String, ApiError> {
    let tokens = b.config().admin.named_tokens();
    if tokens.is_empty() {
        return Err(ApiError::Forbidden(
            "the admin API is off: set admin.token (or admin.tokens) to turn it on".into(),
        ));
    }
    let header = headers.get("authorization").and_then(|v| v.to_str().ok());
    let Some(given) = crate::auth::bearer(header) else {
        return Err(ApiError::Unauthorized(
            "the admin API needs Authorization: Bearer <admin token>".into(),
        ));
    };
    let name = tokens
        .iter()
        .fold(None, |found, (name, token)| {
            // Compare against every token, in constant time, whatever matched before.
            let eq = constant_time_eq(given.as_bytes(), token.as_bytes());
            found.or(eq.then_some(name))
        })
        .ok_or_else(|| ApiError::Forbidden("the admin token was refused".into()))?;
    let actor = headers
        .get("x-actor")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|a| !a.is_empty() && a.len() <= 128)
        .map(|a| format!("{a} ({name})"))
        .unwrap_or_else(|| name.to_string());
    Ok(actor)
}

/// Equal-length inputs take the same time whatever their content.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The answer of `GET /admin/flags` (the `switchyard flags` client reads it as this type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagsListing {
    pub version: u64,
    pub routes: BTreeMap<String, RouteFlag>,
    pub reload: ReloadStatus,
}

/// The answer of `GET /admin/audit`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
}

async fn list(State(b): State<Bridge>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&b, &headers)?;
    let flags = b.flags().current();
    Ok(axum::Json(FlagsListing {
        version: flags.version,
        routes: flags.routes.clone(),
        reload: b.flags().status(),
    })
    .into_response())
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get("if-match") else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or_default().trim();
    let s = s.strip_prefix("W/").unwrap_or(s).trim_matches('"');
    s.parse::<u64>().map(Some).map_err(|_| {
        ApiError::InvalidRequest(format!(
            "If-Match must be a flags version such as 7 or \"7\", not `{s}`"
        ))
    })
}

fn changed(c: Changed) -> Response {
    axum::Json(c).into_response()
}

fn change_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::UnknownRoute(r) => ApiError::UnknownRoute(format!("route {r}")),
        ChangeError::StaleVersion { current, expected } => {
            ApiError::VersionConflict { current, expected }
        }
        ChangeError::Invalid(e) => ApiError::InvalidRequest(e.to_string()),
        ChangeError::Io(e) => ApiError::Internal(format!("cannot write the flags file: {e}")),
        ChangeError::Unavailable(e) => {
            tracing::warn!(error = %e, "flags change refused: the cluster is unreachable");
            ApiError::ClusterUnavailable
        }
    }
}

/// A route's table from a request body (PUT and preview), validated as in `flags.toml`.
fn flag_body(body: &[u8]) -> Result<RouteFlag, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("the body is not valid JSON: {e}")))?;
    RouteFlag::from_json(&value).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

async fn put(
    State(b): State<Bridge>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = authorize(&b, &headers)?;
    let expected = if_match(&headers)?;
    let flag = flag_body(&body)?;
    b.flags()
        .put(&route, flag, expected, &actor)
        .await
        .map(changed)
        .map_err(change_error)
}

async fn rollback(
    State(b): State<Bridge>,
    Path(route): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let actor = authorize(&b, &headers)?;
    b.flags()
        .rollback(&route, &actor)
        .await
        .map(changed)
        .map_err(change_error)
}

/// The answer of `POST /admin/flags/{route}/preview`: the table in force, the proposed
/// one (validated as a PUT would), and what the change would do to the route's recent
/// subjects. Changes nothing.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub route: String,
    pub version: u64,
    pub before: Option<RouteFlag>,
    pub after: RouteFlag,
    pub recent: Movement,
}

async fn preview(
    State(b): State<Bridge>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&b, &headers)?;
    let route = b
        .routes()
        .get(&route)
        .ok_or_else(|| ApiError::UnknownRoute(format!("route {route}")))?
        .name
        .to_string();
    let after = flag_body(&body)?;
    let flags = b.flags().current();
    let subjects = b.metrics().recent_subjects().entries(&route);
    let recent = crate::stats::movement(flags.route(&route), &after, &subjects);
    Ok(axum::Json(Preview {
        version: flags.version,
        before: flags.routes.get(&route).cloned(),
        route,
        after,
        recent,
    })
    .into_response())
}

/// `GET /admin/stats`: every route's counters by transport (see [`crate::stats`]).
async fn stats(State(b): State<Bridge>, headers: HeaderMap) -> Result<Response, ApiError> {
    let actor = authorize(&b, &headers)?;
    let routes: Vec<String> = b.routes().iter().map(|r| r.name.to_string()).collect();
    let flags = b.flags().current();
    Ok(axum::Json(crate::stats::collect(b.metrics(), &routes, &flags, actor)).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
    /// Only this route's entries.
    route: Option<String>,
}

async fn audit(
    State(b): State<Bridge>,
    Query(q): Query<AuditQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&b, &headers)?;
    let limit = q.limit.unwrap_or(100).min(MAX_AUDIT);
    let entries = match q.route.as_deref().filter(|r| !r.is_empty()) {
        None => b.flags().history(limit).await,
        Some(route) => b
            .flags()
            .history(MAX_AUDIT)
            .await
            .into_iter()
            .filter(|e| e.route == route)
            .take(limit)
            .collect(),
    };
    Ok(axum::Json(AuditPage { entries }).into_response())
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
