//! The `openai` and `ollama` engines: the bridge in front of an OpenAI-compatible
//! `/chat/completions` stream (SSE) or Ollama's native `/api/chat` stream (NDJSON).
//!
//! Content deltas become `chunk`s, tool calls `tool_event`s, the finish reason and usage
//! the `completion`. Only the dialect's own final frame (`data: [DONE]`, `"done": true`)
//! completes a stream; an answer that stops before it is an `upstream_error`, so partial
//! text never looks like a finished answer.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::upstream::{self, Lines, UpstreamSpec, failed};
use super::{Caller, Emitter, Engine, EngineError, FieldError, Job, room};
use crate::event::EventKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `POST {base_url}/chat/completions`, `stream: true`, SSE answer.
    OpenAi,
    /// `POST {base_url}/api/chat`, NDJSON answer.
    Ollama,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatSpec {
    pub dialect: Dialect,
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub upstream: UpstreamSpec,
}

/// The chat engines' own keys, in their raw serde form.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChat {
    base_url: Option<String>,
    model: Option<String>,
    api_key: Option<String>,
}

impl ChatSpec {
    pub(super) fn from_table(t: &toml::Table, dialect: Dialect) -> Result<ChatSpec, FieldError> {
        let (own, rest) = super::read_table::<RawChat>(t, upstream::common_keys())?;
        let base_url = upstream::required("base_url", own.base_url)?
            .trim_end_matches('/')
            .to_string();
        upstream::check_url("base_url", &base_url)?;
        let api_key = match own.api_key {
            None => None,
            key => Some(upstream::required("api_key", key)?),
        };
        Ok(ChatSpec {
            dialect,
            model: upstream::required("model", own.model)?,
            base_url,
            api_key,
            upstream: UpstreamSpec::read(rest)?,
        })
    }

    fn url(&self) -> String {
        match self.dialect {
            Dialect::OpenAi => format!("{}/chat/completions", self.base_url),
            Dialect::Ollama => format!("{}/api/chat", self.base_url),
        }
    }
}

pub struct ChatEngine {
    spec: ChatSpec,
    client: reqwest::Client,
}

impl ChatEngine {
    /// Fails when its HTTP client cannot be built (the bridge then refuses to start).
    pub fn new(spec: ChatSpec) -> Result<ChatEngine, EngineError> {
        let client = spec.upstream.client()?;
        Ok(ChatEngine { spec, client })
    }
}

impl Engine for ChatEngine {
    fn kind(&self) -> &'static str {
        match self.spec.dialect {
            Dialect::OpenAi => "openai",
            Dialect::Ollama => "ollama",
        }
    }

    fn prepare(&self, input: &Value, caller: &Caller) -> Result<Job, EngineError> {
        let body = request_body(&self.spec, input);
        let authorization = match &self.spec.api_key {
            Some(key) => Some(format!("Bearer {key}")),
            None => caller.authorization.clone(),
        };
        let mut spec = self.spec.clone();
        // The API key is this engine's own credential: always sent when configured.
        spec.upstream.forward_authorization |= self.spec.api_key.is_some();
        let client = self.client.clone();
        Ok(Box::new(move |out| {
            Box::pin(async move {
                let url = spec.url();
                let resp = upstream::post(
                    &client,
                    &spec.upstream,
                    &url,
                    &body,
                    authorization.as_deref(),
                )
                .await?;
                let lines = Lines::new(resp, &spec.upstream);
                match spec.dialect {
                    Dialect::OpenAi => openai(lines, out).await,
                    Dialect::Ollama => ollama(lines, out).await,
                }
            })
        }))
    }
}

/// The upstream request: model, the input's messages, streaming on, and the input's
/// `options` (temperature, max_tokens, ...) passed through.
fn request_body(spec: &ChatSpec, input: &Value) -> Value {
    let mut body = Map::new();
    if let Some(options) = input.get("options").and_then(Value::as_object) {
        body.extend(options.clone());
    }
    body.insert("model".into(), Value::String(spec.model.clone()));
    body.insert(
        "messages".into(),
        input.get("messages").cloned().unwrap_or_else(|| json!([])),
    );
    body.insert("stream".into(), Value::Bool(true));
    if spec.dialect == Dialect::OpenAi {
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn upstream_error_message(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    Some(match e {
        Value::String(s) => s.clone(),
        other => other
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| other.to_string()),
    })
}

/// OpenAI's SSE stream of `chat.completion.chunk`s, ended by `data: [DONE]`.
async fn openai(mut lines: Lines, out: Emitter) -> Result<(), EngineError> {
    let mut usage = Value::Null;
    let mut finish_reason = Value::Null;
    // Tool calls by index: (id, name).
    let mut calls: BTreeMap<u64, (String, String)> = BTreeMap::new();
    loop {
        // Nothing more is read from the upstream while the stream has no room.
        room(&*out).await;
        let Some(line) = lines.next().await? else {
            break;
        };
        let Some(data) = line.strip_prefix(b"data:") else {
            continue; // blank separators, `event:`, `id:` and `:` comments
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            let completion =
                json!({"status": "complete", "finish_reason": finish_reason, "total_usage": usage});
            out.emit(EventKind::Completion, completion);
            return Ok(());
        }
        let chunk: Value = serde_json::from_slice(data).map_err(|e| {
            failed(format!(
                "the upstream sent an SSE event that is not JSON: {e}"
            ))
        })?;
        if let Some(message) = upstream_error_message(&chunk) {
            return Err(failed(format!("the upstream reported an error: {message}")));
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = u.clone();
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
            continue;
        };
        if let Some(r) = choice.get("finish_reason").filter(|r| !r.is_null()) {
            finish_reason = r.clone();
        }
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta.get("content").and_then(Value::as_str)
            && !text.is_empty()
            && !out.emit_chunk(text)
        {
            return Ok(());
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let function = call.get("function").unwrap_or(&Value::Null);
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                let name = function
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                calls.insert(index, (id.to_string(), name.to_string()));
                out.emit(
                    EventKind::ToolEvent,
                    json!({"event": "started", "call_id": id, "tool_name": name}),
                );
            }
            let args = function
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !args.is_empty()
                && let Some((id, name)) = calls.get(&index)
            {
                out.emit(
                    EventKind::ToolEvent,
                    json!({"event": "arguments", "call_id": id, "tool_name": name, "data": {"arguments": args}}),
                );
            }
        }
    }
    Err(failed(
        "the upstream stream ended without `data: [DONE]`: the answer is incomplete",
    ))
}

/// Ollama's NDJSON chat stream, ended by a line with `"done": true`.
async fn ollama(mut lines: Lines, out: Emitter) -> Result<(), EngineError> {
    let mut calls = 0u64;
    loop {
        // Nothing more is read from the upstream while the stream has no room.
        room(&*out).await;
        let Some(line) = lines.next().await? else {
            break;
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value = serde_json::from_slice(&line)
            .map_err(|e| failed(format!("the upstream sent a line that is not JSON: {e}")))?;
        if let Some(message) = upstream_error_message(&v) {
            return Err(failed(format!("the upstream reported an error: {message}")));
        }
        let message = v.get("message").unwrap_or(&Value::Null);
        if let Some(text) = message.get("content").and_then(Value::as_str)
            && !text.is_empty()
            && !out.emit_chunk(text)
        {
            return Ok(());
        }
        for call in message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let function = call.get("function").unwrap_or(&Value::Null);
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let id = format!("call_{calls}");
            calls += 1;
            out.emit(
                EventKind::ToolEvent,
                json!({"event": "started", "call_id": id, "tool_name": name,
                       "data": {"arguments": function.get("arguments").cloned().unwrap_or(Value::Null)}}),
            );
        }
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            let prompt = v
                .get("prompt_eval_count")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let completion = v.get("eval_count").and_then(Value::as_u64).unwrap_or(0);
            out.emit(
                EventKind::Completion,
                json!({"status": "complete",
                       "finish_reason": v.get("done_reason").cloned().unwrap_or(Value::Null),
                       "total_usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                       "total_tokens": prompt + completion}}),
            );
            return Ok(());
        }
    }
    Err(failed(
        "the upstream stream ended without `\"done\": true`: the answer is incomplete",
    ))
}
