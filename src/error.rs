//! The errors a client can get before a stream starts, one enum for both transports.
//!
//! Each variant has exactly one `error_type` and one HTTP status, defined here; the HTTP
//! adapter turns it into `{"error": {...}}` with that status and the Socket.IO adapter into
//! an ack `{error: {...}}` plus the route's legacy `error` event. Nothing else maps errors.

use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("no route is served at {0}")]
    UnknownRoute(String),
    #[error("no stream {0} is known here (it never existed, or its retention expired)")]
    UnknownStream(String),
    #[error(
        "route {route} is not served over HTTP for this subject yet; keep using Socket.IO event {request_event}"
    )]
    RouteNotMigrated {
        route: String,
        request_event: String,
    },
    #[error("route {route} has moved to HTTP streaming: POST {http_path}")]
    RouteMigrated { route: String, http_path: String },
    #[error("request_id {0} names a live stream; resume it with GET /api/streams/{0}")]
    DuplicateRequest(String),
    #[error(
        "stream {request_id} no longer holds the events after seq {after} (oldest kept: {first_kept}); start a new request"
    )]
    ResumeGap {
        request_id: String,
        after: i64,
        first_kept: u64,
    },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the bridge already runs {limit} streams (limits.max_streams); retry later")]
    OverCapacity { limit: usize },
    #[error(
        "this subject already runs {limit} streams (limits.max_streams_per_subject); retry when one ends"
    )]
    SubjectOverCapacity { limit: usize },
    #[error(
        "live streams hold the whole memory budget (limits.max_live_bytes = {limit} bytes); retry shortly"
    )]
    OverBudget { limit: u64 },
    #[error("{0}; retry shortly")]
    Connections(crate::capacity::Refused),
    #[error("the bridge is shutting down; retry on another instance")]
    Draining,
    #[error("{0}")]
    Forbidden(String),
    #[error("flags are at version {current}, not {expected}: read them again and retry")]
    VersionConflict { current: u64, expected: u64 },
    #[error("this node cannot reach the cluster's Redis; retry on another instance")]
    ClusterUnavailable,
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::UnknownRoute(_) => "unknown_route",
            ApiError::UnknownStream(_) => "unknown_stream",
            ApiError::RouteNotMigrated { .. } => "route_not_migrated",
            ApiError::RouteMigrated { .. } => "route_migrated",
            ApiError::DuplicateRequest(_) => "duplicate_request",
            ApiError::ResumeGap { .. } => "resume_gap",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::OverCapacity { .. }
            | ApiError::SubjectOverCapacity { .. }
            | ApiError::OverBudget { .. }
            | ApiError::Connections(_) => "over_capacity",
            ApiError::Draining => "draining",
            ApiError::ClusterUnavailable => "cluster_unavailable",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::VersionConflict { .. } => "version_conflict",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            ApiError::InvalidRequest(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::UnknownRoute(_) | ApiError::UnknownStream(_) => 404,
            ApiError::Forbidden(_) => 403,
            ApiError::RouteNotMigrated { .. }
            | ApiError::RouteMigrated { .. }
            | ApiError::DuplicateRequest(_)
            | ApiError::VersionConflict { .. } => 409,
            ApiError::ResumeGap { .. } => 410,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::OverCapacity { .. }
            | ApiError::SubjectOverCapacity { .. }
            | ApiError::OverBudget { .. }
            | ApiError::Connections(_) => 429,
            ApiError::Draining | ApiError::ClusterUnavailable => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// The error object: `{error_type, message}` (plus `http_path` for `route_migrated`).
    pub fn body(&self) -> Value {
        let mut body = json!({"error_type": self.error_type(), "message": self.to_string()});
        if let (ApiError::RouteMigrated { http_path, .. }, Value::Object(map)) = (self, &mut body) {
            map.insert("http_path".into(), Value::String(http_path.clone()));
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrated_carries_the_http_path() {
        let e = ApiError::RouteMigrated {
            route: "chat".into(),
            http_path: "/api/ai/chat/unified".into(),
        };
        assert_eq!(e.http_status(), 409);
        assert_eq!(e.body()["error_type"], "route_migrated");
        assert_eq!(e.body()["http_path"], "/api/ai/chat/unified");
    }
}
