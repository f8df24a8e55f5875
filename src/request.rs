//! What a stream request is, once an adapter has decoded it: [`StreamRequest`], the
//! [`Subject`] it is made for, its [`RequestId`] and the [`Transport`] it came on.
//!
//! Owns the validation of the fields the bridge itself reads from the neutral input
//! (`request_id`, `session_id`, `options`), the same for every transport. Knows nothing of
//! wire formats.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::routes::Route;

/// A stream's id: given by the client or a fresh UUID v4. Safe to put in a URL path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RequestId(Arc<str>);

impl RequestId {
    pub const MAX_LEN: usize = 128;

    pub fn generate() -> RequestId {
        let id = match random_16() {
            Some(bytes) => uuid::Builder::from_random_bytes(bytes).into_uuid(),
            None => uuid::Uuid::new_v4(),
        };
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        RequestId(Arc::from(&*id.hyphenated().encode_lower(&mut text)))
    }

    /// Accepts 1 to 128 printable ASCII characters, none of them `/`, `?`, `#`, `%` or space.
    pub fn parse(s: &str) -> Result<RequestId, ApiError> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%'));
        if ok {
            Ok(RequestId(s.into()))
        } else {
            Err(ApiError::InvalidRequest(format!(
                "field `request_id` must be 1 to {} printable ASCII characters without '/', '?', '#', '%' or spaces",
                Self::MAX_LEN
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 16 bytes from the operating system's random source, drawn 4 KiB at a time per thread
/// (one `getrandom` call per 256 ids, not one per id); each handed-out byte is wiped from
/// the pool. `None` when the source fails (the caller asks it directly then).
fn random_16() -> Option<[u8; 16]> {
    use std::cell::RefCell;
    const POOL: usize = 4096;
    thread_local! {
        static RANDOM: RefCell<([u8; POOL], usize)> = const { RefCell::new(([0; POOL], POOL)) };
    }
    RANDOM.with_borrow_mut(|(pool, used)| {
        if *used + 16 > POOL {
            getrandom::fill(pool).ok()?;
            *used = 0;
        }
        let taken = pool.get_mut(*used..*used + 16)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(taken);
        taken.fill(0);
        *used += 16;
        Some(out)
    })
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The transport a request or a subscriber uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Socketio,
    Ndjson,
    Sse,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Socketio, Transport::Ndjson, Transport::Sse];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Socketio => "socketio",
            Transport::Ndjson => "ndjson",
            Transport::Sse => "sse",
        }
    }
}

/// Who a request is for: the keys flag evaluation can stick to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub user: Option<String>,
    pub session: Option<String>,
    pub tenant: Option<String>,
}

impl Subject {
    /// The key per-subject limits count under: the user, else the tenant; `None` for an
    /// anonymous request.
    pub fn limit_key(&self) -> Option<Arc<str>> {
        match (&self.user, &self.tenant) {
            (Some(u), _) => Some(format!("user:{u}").into()),
            (None, Some(t)) => Some(format!("tenant:{t}").into()),
            (None, None) => None,
        }
    }
}

/// A decoded request, ready for the bridge.
#[derive(Clone, Debug)]
pub struct StreamRequest {
    pub route: Arc<Route>,
    /// The whole neutral input (the HTTP body, or the rendered Socket.IO request template).
    pub input: Value,
    pub request_id: Option<RequestId>,
    pub session_id: Option<Arc<str>>,
    pub subject: Subject,
    pub transport: Transport,
    /// What upstream engines may forward of the caller (never logged).
    pub caller: crate::engine::Caller,
}

/// Longest accepted `session_id`.
pub const MAX_SESSION_ID_LEN: usize = 256;

impl StreamRequest {
    /// Validates the fields the bridge reads from the neutral input. The session id, when
    /// present, also becomes the subject's session.
    pub fn from_input(
        route: Arc<Route>,
        input: Value,
        mut subject: Subject,
        transport: Transport,
    ) -> Result<StreamRequest, ApiError> {
        let Value::Object(map) = &input else {
            return Err(ApiError::InvalidRequest(
                "the request must be a JSON object".into(),
            ));
        };
        let request_id = match map.get("request_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(RequestId::parse(s)?),
            Some(_) => {
                return Err(ApiError::InvalidRequest(
                    "field `request_id` must be a string".into(),
                ));
            }
        };
        let session_id = match map.get("session_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_session_id(s)?),
            Some(_) => {
                return Err(ApiError::InvalidRequest(
                    "field `session_id` must be a string".into(),
                ));
            }
        };
        match map.get("options") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(ApiError::InvalidRequest(
                    "field `options` must be an object".into(),
                ));
            }
        }
        if let Some(s) = &session_id {
            subject.session = Some(s.to_string());
        }
        Ok(StreamRequest {
            route,
            input,
            request_id,
            session_id,
            subject,
            transport,
            caller: crate::engine::Caller::default(),
        })
    }

    /// The engine options (`{}` when absent).
    pub fn options(&self) -> Option<&serde_json::Map<String, Value>> {
        self.input.get("options").and_then(Value::as_object)
    }
}

/// A session id: 1 to 256 characters, no control characters.
pub fn parse_session_id(s: &str) -> Result<Arc<str>, ApiError> {
    if s.is_empty() || s.len() > MAX_SESSION_ID_LEN || s.chars().any(char::is_control) {
        return Err(ApiError::InvalidRequest(format!(
            "`session_id` must be 1 to {MAX_SESSION_ID_LEN} characters without control characters"
        )));
    }
    Ok(s.into())
}

/// What an encoder knows of a stream: its id, its route and its session. A plain
/// description, never the live stream (its log, its lock, its subscribers).
#[derive(Clone, Copy, Debug)]
pub struct StreamDesc<'a> {
    pub id: &'a RequestId,
    pub route: &'a crate::routes::Route,
    pub session_id: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_uuid_v4s_across_pool_refills() {
        let ids: std::collections::HashSet<String> = (0..2_000)
            .map(|_| RequestId::generate().to_string())
            .collect();
        assert_eq!(ids.len(), 2_000);
        for id in &ids {
            let u = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(u.get_version_num(), 4, "{id}");
            assert_eq!(id, &u.hyphenated().to_string());
        }
    }

    #[test]
    fn request_ids() {
        assert!(RequestId::parse("abc-123_x.y:z").is_ok());
        for bad in ["", "a/b", "a b", "a?b", &"x".repeat(129), "é"] {
            assert!(RequestId::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(RequestId::generate().as_str().len(), 36);
    }
}
