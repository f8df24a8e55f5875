//! What the upstream engines (`ndjson`, `openai`, `ollama`) share: their routes.toml
//! settings, one pooled HTTP client per engine, the POST with its retry rule, and a line
//! reader with an idle timeout and a line-size limit.
//!
//! Owns talking HTTP to an upstream; it never sees the bridge's transports, and it never
//! logs header values (they may be secrets).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;

use super::{EngineError, FieldError};

/// The `error_type` of every upstream failure.
pub const UPSTREAM_ERROR: &str = "upstream_error";

/// How much of a failed upstream answer is quoted in the error message.
const QUOTE_BYTES: usize = 200;

/// Settings every upstream engine takes in its `engine = { ... }` table.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    /// Seconds to wait for the upstream's answer (status and headers).
    pub timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// Seconds the upstream may stay silent mid-answer.
    pub idle_timeout_secs: u64,
    /// Retries when the upstream fails before its first byte (refused, 5xx).
    pub retries: u32,
    /// Extra request headers, `${ENV}` already interpolated.
    pub headers: BTreeMap<String, String>,
    /// Pass the caller's `Authorization` header on.
    pub forward_authorization: bool,
    /// Longest accepted line (or SSE event) from the upstream.
    pub max_line_bytes: usize,
}

impl Default for UpstreamSpec {
    fn default() -> Self {
        UpstreamSpec {
            timeout_secs: 30,
            connect_timeout_secs: 5,
            idle_timeout_secs: 60,
            retries: 1,
            headers: BTreeMap::new(),
            forward_authorization: false,
            max_line_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The common keys of an upstream engine's table, in their raw serde form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    retries: Option<u64>,
    headers: Option<BTreeMap<String, String>>,
    forward_authorization: Option<bool>,
    max_line_bytes: Option<u64>,
}

/// The keys every upstream engine takes besides its own.
pub fn common_keys() -> &'static [&'static str] {
    crate::problem::fields_of::<RawUpstream>()
}

impl UpstreamSpec {
    /// Reads the common keys of an engine table (the caller has refused unknown ones).
    pub fn read(t: toml::Table) -> Result<UpstreamSpec, FieldError> {
        let raw: RawUpstream = toml::Value::Table(t)
            .try_into()
            .map_err(|e| super::field_error(&e))?;
        let d = UpstreamSpec::default();
        let mut headers = BTreeMap::new();
        for (name, value) in raw.headers.unwrap_or_default() {
            let field = format!("headers.{name}");
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((field, "is not a valid header name".into()));
            }
            headers.insert(name, interpolate(&value).map_err(|m| (field, m))?);
        }
        Ok(UpstreamSpec {
            timeout_secs: raw.timeout_secs.map_or(d.timeout_secs, |v| v.max(1)),
            connect_timeout_secs: raw
                .connect_timeout_secs
                .map_or(d.connect_timeout_secs, |v| v.max(1)),
            idle_timeout_secs: raw
                .idle_timeout_secs
                .map_or(d.idle_timeout_secs, |v| v.max(1)),
            retries: raw
                .retries
                .map_or(d.retries, |v| u32::try_from(v.min(10)).unwrap_or(10)),
            headers,
            forward_authorization: raw.forward_authorization.unwrap_or(d.forward_authorization),
            max_line_bytes: raw.max_line_bytes.map_or(d.max_line_bytes, |v| {
                usize::try_from(v).unwrap_or(usize::MAX).max(1024)
            }),
        })
    }

    /// The engine's pooled client.
    pub fn client(&self) -> Result<reqwest::Client, EngineError> {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(self.connect_timeout_secs))
            .build()
            .map_err(|e| failed(format!("cannot build the upstream HTTP client: {e}")))
    }
}

/// A required string key of an engine table, `${ENV}` interpolated.
pub fn required(key: &str, value: Option<String>) -> Result<String, FieldError> {
    match value {
        Some(s) if !s.is_empty() => interpolate(&s).map_err(|m| (key.to_string(), m)),
        Some(_) => Err((key.into(), "must be a non-empty string".into())),
        None => Err((key.into(), "missing".into())),
    }
}

/// Checks that an URL is an absolute http(s) URL.
pub fn check_url(key: &str, url: &str) -> Result<(), FieldError> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" => Ok(()),
        Ok(u) if u.scheme() == "https" => Err((
            key.into(),
            "https upstreams need a TLS-enabled build; put a local TLS proxy in front".into(),
        )),
        _ => Err((
            key.into(),
            format!("`{url}` is not an absolute http:// URL"),
        )),
    }
}

/// Replaces every `${NAME}` with the environment variable NAME (which must be set).
pub fn interpolate(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("has an unclosed `${`".into());
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => {
                return Err(format!(
                    "names environment variable {name}, which is not set"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub fn failed(message: impl Into<String>) -> EngineError {
    EngineError::Failed {
        error_type: UPSTREAM_ERROR.into(),
        message: message.into(),
    }
}

/// POSTs `body` and returns the answer once it is a 2xx. Retries (up to `spec.retries`
/// times) only when nothing was received yet: a refused connection or a 5xx status.
pub async fn post(
    client: &reqwest::Client,
    spec: &UpstreamSpec,
    url: &str,
    body: &Value,
    authorization: Option<&str>,
) -> Result<reqwest::Response, EngineError> {
    let mut attempt = 0;
    loop {
        let mut req = client.post(url).json(body);
        for (k, v) in &spec.headers {
            req = req.header(k, v);
        }
        if spec.forward_authorization
            && let Some(a) = authorization
        {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let wait = Duration::from_secs(spec.timeout_secs);
        let retryable = match tokio::time::timeout(wait, req.send()).await {
            Err(_) => {
                return Err(failed(format!(
                    "the upstream did not answer within {}s",
                    spec.timeout_secs
                )));
            }
            Ok(Err(e)) if e.is_connect() => failed(format!("cannot connect to the upstream: {e}")),
            Ok(Err(e)) => return Err(failed(format!("the upstream request failed: {e}"))),
            Ok(Ok(resp)) if resp.status().is_success() => return Ok(resp),
            Ok(Ok(resp)) => {
                let status = resp.status();
                let quote = quote(resp).await;
                let e = failed(format!("the upstream answered {status}: {quote}"));
                if !status.is_server_error() {
                    return Err(e);
                }
                e
            }
        };
        if attempt >= spec.retries {
            return Err(retryable);
        }
        attempt += 1;
        tracing::info!(attempt, "retrying the upstream before its first byte");
    }
}

async fn quote(resp: reqwest::Response) -> String {
    let bytes = resp.bytes().await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(QUOTE_BYTES)]).to_string();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads an upstream body line by line (`\n`, an optional `\r` dropped), each line as soon
/// as it is complete, with the spec's idle timeout and line limit.
pub struct Lines {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    buf: BytesMut,
    idle: Duration,
    max_line: usize,
    eof: bool,
}

impl Lines {
    pub fn new(resp: reqwest::Response, spec: &UpstreamSpec) -> Lines {
        Lines {
            body: resp.bytes_stream().boxed(),
            buf: BytesMut::new(),
            idle: Duration::from_secs(spec.idle_timeout_secs),
            max_line: spec.max_line_bytes,
            eof: false,
        }
    }

    /// The next line; `Ok(None)` at a clean end of the body. A last line without its
    /// newline is still returned.
    pub async fn next(&mut self) -> Result<Option<Bytes>, EngineError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line = self.buf.split_to(pos + 1);
                line.truncate(pos);
                if line.last() == Some(&b'\r') {
                    line.truncate(pos - 1);
                }
                return Ok(Some(line.freeze()));
            }
            if self.buf.len() > self.max_line {
                return Err(failed(format!(
                    "the upstream sent a line longer than {} bytes",
                    self.max_line
                )));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.buf.split().freeze()));
            }
            match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => {
                    return Err(failed(format!(
                        "the upstream sent nothing for {}s",
                        self.idle.as_secs()
                    )));
                }
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Some(Err(e))) => {
                    return Err(failed(format!("the upstream connection broke: {e}")));
                }
                Ok(None) => self.eof = true,
            }
        }
    }

    /// Whether the body ended in the middle of a line (no final newline).
    pub fn ended_mid_line(&self) -> bool {
        self.eof && !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_interpolation() {
        // CARGO_PKG_NAME is set for every test binary.
        assert_eq!(
            interpolate("a ${CARGO_PKG_NAME} b").unwrap(),
            "a switchyard b"
        );
        assert_eq!(interpolate("plain").unwrap(), "plain");
        assert!(interpolate("${SWITCHYARD_SURELY_UNSET_VAR}").is_err());
        assert!(interpolate("${OPEN").is_err());
    }

    #[test]
    fn reads_the_common_keys() {
        let t: toml::Table = toml::from_str(
            "timeout_secs = 3\nretries = 2\nheaders = { x-key = \"${CARGO_PKG_NAME}\" }\nforward_authorization = true\n",
        )
        .unwrap();
        let s = UpstreamSpec::read(t).unwrap();
        assert_eq!(
            (s.timeout_secs, s.retries, s.forward_authorization),
            (3, 2, true)
        );
        assert_eq!(s.headers["x-key"], "switchyard");
        let bad: toml::Table = toml::from_str("headers = { \"bad name\" = \"x\" }").unwrap();
        assert_eq!(UpstreamSpec::read(bad).unwrap_err().0, "headers.bad name");
        assert!(super::common_keys().contains(&"max_line_bytes"));
        assert!(check_url("url", "ftp://x").is_err());
        assert!(check_url("url", "http://127.0.0.1:1/x").is_ok());
    }
}
