//! The `script` engine: deterministic streams for demos, tests and benchmarks.
//!
//! Streams the words of the last user message (or a fixed text), or, with
//! `options.chunks`, exactly N chunks of `chunk_bytes` ASCII bytes. Options beyond the
//! route's maxima are refused before the stream starts, never clamped.
//!
//! Fault drills: on a route with `fault_drills = true` (off by default), `panic_after`
//! makes the engine task panic after N chunks, so operators and tests can watch the
//! bridge turn an engine bug into `error` + `end`. Elsewhere the option is refused.

use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{Map, Value, json};

use super::{Caller, Emitter, Engine, EngineError, FieldError, Job, room};
use crate::event::EventKind;

/// The text streamed when the request has no user message.
pub const FIXED_TEXT: &str =
    "Hello from the Switchyard script engine. Send a user message and it streams your words back.";

/// Chunks written between two yields to the runtime when `interval_ms` is 0, so a long
/// burst never monopolises a worker thread. The first burst is written where the stream
/// starts (the requesting task polls the engine once), so a short stream leaves whole with
/// its response head, as a server writing a ready buffer would send it.
const YIELD_EVERY: u64 = 128;

/// A route's maxima for the script options (`engine = { kind = "script", ... }`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptLimits {
    pub max_chunks: u64,
    pub max_chunk_bytes: u64,
    pub max_interval_ms: u64,
    pub max_tool_calls: u64,
    /// Accept the fault-drill options (`panic_after`). Off unless the route says
    /// `fault_drills = true`.
    pub fault_drills: bool,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_chunks: 100_000,
            max_chunk_bytes: 4096,
            max_interval_ms: 60_000,
            max_tool_calls: 100,
            fault_drills: false,
        }
    }
}

impl ScriptLimits {
    pub(super) fn from_table(t: &toml::Table) -> Result<ScriptLimits, FieldError> {
        let (raw, _) = super::read_table::<RawScript>(t, &[])?;
        let d = ScriptLimits::default();
        let limits = ScriptLimits {
            max_chunks: raw.max_chunks.unwrap_or(d.max_chunks),
            max_chunk_bytes: raw.max_chunk_bytes.unwrap_or(d.max_chunk_bytes),
            max_interval_ms: raw.max_interval_ms.unwrap_or(d.max_interval_ms),
            max_tool_calls: raw.max_tool_calls.unwrap_or(d.max_tool_calls),
            fault_drills: raw.fault_drills.unwrap_or(d.fault_drills),
        };
        if limits.max_chunk_bytes == 0 {
            return Err(("max_chunk_bytes".into(), "must be at least 1".into()));
        }
        Ok(limits)
    }
}

/// The `script` engine's keys, in their raw serde form.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    max_chunks: Option<u64>,
    max_chunk_bytes: Option<u64>,
    max_interval_ms: Option<u64>,
    max_tool_calls: Option<u64>,
    fault_drills: Option<bool>,
}

/// What one request asked of the script engine, checked against the limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptPlan {
    /// `None`: the words of the text below; `Some(n)`: n generated chunks.
    pub chunks: Option<u64>,
    pub chunk_bytes: u64,
    pub interval_ms: u64,
    pub fail_after: Option<u64>,
    /// Fault drill: panic after this many chunks (only on routes with `fault_drills`).
    pub panic_after: Option<u64>,
    pub tool_calls: u64,
    pub text: String,
}

pub struct ScriptEngine {
    limits: ScriptLimits,
}

impl ScriptEngine {
    pub fn new(limits: ScriptLimits) -> ScriptEngine {
        ScriptEngine { limits }
    }

    pub fn plan(&self, input: &Value) -> Result<ScriptPlan, EngineError> {
        let empty = Map::new();
        let options = input
            .get("options")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let l = &self.limits;
        Ok(ScriptPlan {
            chunks: option(options, "chunks", l.max_chunks, "max_chunks")?,
            chunk_bytes: option(options, "chunk_bytes", l.max_chunk_bytes, "max_chunk_bytes")?
                .unwrap_or(16),
            interval_ms: option(options, "interval_ms", l.max_interval_ms, "max_interval_ms")?
                .unwrap_or(0),
            fail_after: option(options, "fail_after", u64::MAX, "")?,
            panic_after: drill(options, "panic_after", l.fault_drills)?,
            tool_calls: option(options, "tool_calls", l.max_tool_calls, "max_tool_calls")?
                .unwrap_or(0),
            text: last_user_message(input).unwrap_or_else(|| FIXED_TEXT.to_string()),
        })
        .and_then(|plan| {
            if plan.chunk_bytes == 0 {
                Err(EngineError::InvalidOption {
                    option: "chunk_bytes".into(),
                    message: "must be at least 1".into(),
                })
            } else {
                Ok(plan)
            }
        })
    }
}

impl Engine for ScriptEngine {
    fn kind(&self) -> &'static str {
        "script"
    }

    fn prepare(&self, input: &Value, _caller: &Caller) -> Result<Job, EngineError> {
        let plan = self.plan(input)?;
        Ok(Box::new(move |out| run(plan, out).boxed()))
    }
}

fn option(
    options: &Map<String, Value>,
    name: &str,
    max: u64,
    limit_name: &str,
) -> Result<Option<u64>, EngineError> {
    let invalid = |message: String| EngineError::InvalidOption {
        option: name.into(),
        message,
    };
    match options.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > max => Err(invalid(format!(
                "is {n}, over this route's maximum of {max} (engine.{limit_name} in routes.toml)"
            ))),
            Some(n) => Ok(Some(n)),
            None => Err(invalid(format!("must be a non-negative integer, not {v}"))),
        },
    }
}

/// A fault-drill option: refused unless the route enables drills.
fn drill(
    options: &Map<String, Value>,
    name: &str,
    enabled: bool,
) -> Result<Option<u64>, EngineError> {
    let value = option(options, name, u64::MAX, "")?;
    if value.is_some() && !enabled {
        return Err(EngineError::InvalidOption {
            option: name.into(),
            message: "is a fault drill, refused unless the route enables it (engine.fault_drills = true in routes.toml)".into(),
        });
    }
    Ok(value)
}

/// The content of the last `user` message: a string, or the text parts of a parts array.
fn last_user_message(input: &Value) -> Option<String> {
    let messages = input.get("messages")?.as_array()?;
    let msg = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    match msg.get("content")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
    .filter(|s| !s.trim().is_empty())
}

/// The chunk texts of a plan without `chunks`: each word followed by one space but the last.
pub fn words(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let n = words.len();
    words
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            if i + 1 < n {
                format!("{w} ")
            } else {
                w.to_string()
            }
        })
        .collect()
}

/// Generated chunk `i`: `len` lowercase letters, rotating with `i` so order is checkable.
pub fn generated_chunk(i: u64, len: u64) -> String {
    const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(len as usize);
    let mut start = (i % 26) as usize;
    let mut left = len as usize;
    while left > 0 {
        let piece = &ALPHABET[start..(start + left).min(26)];
        out.push_str(piece);
        left -= piece.len();
        start = 0;
    }
    out
}

async fn run(plan: ScriptPlan, out: Emitter) -> Result<(), EngineError> {
    for i in 0..plan.tool_calls {
        let call_id = format!("call_{i}");
        let started = json!({"event": "started", "call_id": call_id, "tool_name": "script.echo",
            "message": format!("calling script.echo #{i}")});
        let done = json!({"event": "completed", "call_id": call_id, "tool_name": "script.echo",
            "data": {"result": i}});
        room(&*out).await;
        if !out.emit(EventKind::ToolEvent, started) || !out.emit(EventKind::ToolEvent, done) {
            return Ok(());
        }
    }
    let total = match plan.chunks {
        Some(n) => n,
        None => words(&plan.text).len() as u64,
    };
    let words = match plan.chunks {
        Some(_) => Vec::new(),
        None => words(&plan.text),
    };
    for i in 0..total {
        if plan.panic_after == Some(i) {
            drill_panic(i);
        }
        if plan.fail_after == Some(i) {
            return Err(EngineError::Failed {
                error_type: "engine_error".into(),
                message: format!(
                    "the script engine failed after {i} chunks, as options.fail_after asked"
                ),
            });
        }
        if i > 0 {
            if plan.interval_ms > 0 {
                tokio::time::sleep(Duration::from_millis(plan.interval_ms)).await;
            } else if i % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
        }
        // A stream nobody reads pauses here rather than running at full speed.
        room(&*out).await;
        let text = match plan.chunks {
            Some(_) => generated_chunk(i, plan.chunk_bytes),
            None => words.get(i as usize).cloned().unwrap_or_default(),
        };
        if !out.emit_chunk(&text) {
            return Ok(());
        }
    }
    if plan.panic_after == Some(total) {
        drill_panic(total);
    }
    if plan.fail_after == Some(total) {
        return Err(EngineError::Failed {
            error_type: "engine_error".into(),
            message: format!(
                "the script engine failed after {total} chunks, as options.fail_after asked"
            ),
        });
    }
    Ok(())
}

/// The `panic_after` drill: a real panic in the engine task, as an engine bug would be.
#[allow(clippy::panic)]
fn drill_panic(chunks: u64) -> ! {
    panic!(
        "fault drill: the script engine panics after {chunks} chunks, as options.panic_after asked"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(EventKind, Value)>>);
    impl super::super::Sink for Collect {
        fn emit(&self, kind: EventKind, data: Value) -> bool {
            self.0.lock().unwrap().push((kind, data));
            true
        }
    }

    fn engine() -> ScriptEngine {
        ScriptEngine::new(ScriptLimits {
            max_chunks: 10,
            ..ScriptLimits::default()
        })
    }

    async fn collect(input: Value) -> (Vec<(EventKind, Value)>, Result<(), EngineError>) {
        let sink = std::sync::Arc::new(Collect::default());
        let job = engine().prepare(&input, &Caller::default()).unwrap();
        let r = job(sink.clone()).await;
        let events = sink.0.lock().unwrap().clone();
        (events, r)
    }

    #[tokio::test]
    async fn words_of_the_last_user_message() {
        let input = json!({"messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": "hello   brave\nnew world"}]});
        let (events, r) = collect(input).await;
        assert!(r.is_ok());
        let texts: Vec<&str> = events
            .iter()
            .map(|(_, d)| d["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["hello ", "brave ", "new ", "world"]);
    }

    #[tokio::test]
    async fn fixed_text_without_a_message() {
        let (events, _) = collect(json!({})).await;
        let joined: String = events
            .iter()
            .map(|(_, d)| d["text"].as_str().unwrap())
            .collect();
        assert_eq!(joined, FIXED_TEXT);
    }

    #[tokio::test]
    async fn n_chunks_of_exact_size_tools_first_then_failure() {
        let input =
            json!({"options": {"chunks": 5, "chunk_bytes": 3, "tool_calls": 2, "fail_after": 4}});
        let (events, r) = collect(input).await;
        assert_eq!(events.len(), 4 + 4);
        assert!(events[..4].iter().all(|(k, _)| *k == EventKind::ToolEvent));
        assert_eq!(events[0].1["event"], "started");
        assert_eq!(events[1].1["event"], "completed");
        assert_eq!(events[4].1["text"], "abc");
        assert_eq!(events[5].1["text"], "bcd");
        assert!(matches!(r, Err(EngineError::Failed { .. })));
    }

    #[test]
    fn options_over_their_maximum_are_refused_by_name() {
        let e = engine();
        for (opt, v) in [
            ("chunks", json!(11)),
            ("interval_ms", json!(60_001)),
            ("tool_calls", json!(101)),
            ("chunk_bytes", json!(70_000)),
        ] {
            let err = e.plan(&json!({"options": {opt: v}})).unwrap_err();
            assert!(err.to_string().contains(opt), "{err}");
        }
        let err = e.plan(&json!({"options": {"chunks": "many"}})).unwrap_err();
        assert!(err.to_string().contains("non-negative integer"));
        assert!(e.plan(&json!({"options": {"chunk_bytes": 0}})).is_err());
    }

    #[test]
    fn the_panic_drill_is_refused_unless_the_route_enables_it() {
        let input = json!({"options": {"chunks": 3, "panic_after": 1}});
        let err = engine().plan(&input).unwrap_err();
        assert!(err.to_string().contains("panic_after"), "{err}");
        assert!(err.to_string().contains("fault_drills"), "{err}");
        let t: toml::Table = toml::from_str("kind = \"script\"\nfault_drills = true").unwrap();
        let drills = ScriptEngine::new(ScriptLimits::from_table(&t).unwrap());
        assert_eq!(drills.plan(&input).unwrap().panic_after, Some(1));
        let t: toml::Table = toml::from_str("kind = \"script\"\nfault_drills = 1").unwrap();
        assert!(ScriptLimits::from_table(&t).is_err());
    }
}
