//! The `ndjson` engine: the bridge in front of an existing service that already streams
//! neutral envelopes (`{"event", "seq", "data"}` per line), e.g. a FastAPI
//! `StreamingResponse`.
//!
//! Re-emits each event as soon as its line is complete. The core renumbers `seq` and keeps
//! the stream rules whatever the upstream sends; anything that is not a clean stream ending
//! in `end` becomes an `upstream_error`.

use serde_json::{Value, json};

use super::upstream::{self, Lines, UpstreamSpec, failed};
use super::{Caller, Emitter, Engine, EngineError, FieldError, Job, room};
use crate::event::EventKind;

/// How much of a bad line is quoted in the error.
const QUOTE: usize = 120;

#[derive(Debug, Clone, PartialEq)]
pub struct NdjsonSpec {
    pub url: String,
    pub upstream: UpstreamSpec,
}

impl NdjsonSpec {
    pub(super) fn from_table(t: &toml::Table) -> Result<NdjsonSpec, FieldError> {
        let (own, rest) = super::read_table::<RawNdjson>(t, upstream::common_keys())?;
        let url = upstream::required("url", own.url)?;
        upstream::check_url("url", &url)?;
        Ok(NdjsonSpec {
            url,
            upstream: UpstreamSpec::read(rest)?,
        })
    }
}

/// The `ndjson` engine's own key, in its raw serde form.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNdjson {
    url: Option<String>,
}

pub struct NdjsonEngine {
    spec: NdjsonSpec,
    client: reqwest::Client,
}

impl NdjsonEngine {
    /// Fails when its HTTP client cannot be built (the bridge then refuses to start).
    pub fn new(spec: NdjsonSpec) -> Result<NdjsonEngine, EngineError> {
        let client = spec.upstream.client()?;
        Ok(NdjsonEngine { spec, client })
    }
}

impl Engine for NdjsonEngine {
    fn kind(&self) -> &'static str {
        "ndjson"
    }

    fn prepare(&self, input: &Value, caller: &Caller) -> Result<Job, EngineError> {
        let (spec, client, input) = (self.spec.clone(), self.client.clone(), input.clone());
        let authorization = caller.authorization.clone();
        Ok(Box::new(move |out| {
            Box::pin(async move { run(spec, client, input, authorization, out).await })
        }))
    }
}

async fn run(
    spec: NdjsonSpec,
    client: reqwest::Client,
    input: Value,
    authorization: Option<String>,
    out: Emitter,
) -> Result<(), EngineError> {
    let resp = upstream::post(
        &client,
        &spec.upstream,
        &spec.url,
        &input,
        authorization.as_deref(),
    )
    .await?;
    let mut lines = Lines::new(resp, &spec.upstream);
    let mut first = true;
    let mut terminal = false;
    loop {
        // Nothing more is read from the upstream while the stream has no room.
        room(&*out).await;
        let Some(line) = lines.next().await? else {
            break;
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let envelope: Value = serde_json::from_slice(&line).map_err(|e| {
            let quote = String::from_utf8_lossy(&line[..line.len().min(QUOTE)]).to_string();
            let what = if lines.ended_mid_line() {
                "the upstream closed the connection in the middle of a line"
            } else {
                "the upstream sent a line that is not JSON"
            };
            failed(format!("{what} ({e}): {quote}"))
        })?;
        let Some(name) = envelope.get("event").and_then(Value::as_str) else {
            return Err(failed("the upstream sent a line without an `event` name"));
        };
        let Some(kind) = EventKind::parse(name) else {
            return Err(failed(format!(
                "the upstream sent an unknown event type `{name}`"
            )));
        };
        let data = envelope.get("data").cloned().unwrap_or_else(|| json!({}));
        match kind {
            EventKind::End => {
                let reason = data.get("reason").and_then(Value::as_str);
                return match reason {
                    // A failed end with no `error` before it still must not look finished.
                    Some(r @ ("error" | "timeout")) if !terminal => Err(failed(format!(
                        "the upstream ended its stream with reason `{r}`"
                    ))),
                    _ => Ok(()),
                };
            }
            EventKind::Heartbeat => {}
            EventKind::StatusUpdate
                if first && data.get("status").and_then(Value::as_str) == Some("started") => {}
            _ => {
                terminal |= matches!(kind, EventKind::Completion | EventKind::Error);
                if !out.emit(kind, data) {
                    // The stream has its terminal event (or was stopped): nothing more to read.
                    return Ok(());
                }
            }
        }
        first = false;
    }
    Err(failed(
        "the upstream ended without its final `end` event: the answer is incomplete",
    ))
}
