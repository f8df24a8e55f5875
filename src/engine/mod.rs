//! Engines: what produces a stream's events (SPEC section 7).
//!
//! Owns the [`Engine`] trait, the per-route [`EngineSpec`] from `routes.toml`, and the
//! engines themselves. An engine writes events through a [`Sink`] and returns how it
//! ended; it never sees a transport, a subscriber, a `seq` or the stream rules (the core
//! applies those to whatever an engine writes).

pub mod ndjson;
pub mod openai;
pub mod script;
pub mod upstream;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::event::EventKind;

/// Where an engine writes its events. Implemented by the hub's stream log.
pub trait Sink: Send + Sync {
    /// Appends one event; `false` once the stream takes no more events (it has its
    /// terminal event, or it was stopped): the engine should return.
    fn emit(&self, kind: EventKind, data: Value) -> bool;

    /// Appends `chunk {text}`: the same as [`Sink::emit`] of that event, without building
    /// its JSON value (the per-token path of every engine).
    fn emit_chunk(&self, text: &str) -> bool {
        self.emit(EventKind::Chunk, serde_json::json!({ "text": text }))
    }

    /// `None` when the stream takes more events now; otherwise a wait until it does (its
    /// subscribers read, or the slowest was cut for stalling). Engines call [`room`] before
    /// each write, so a stream nobody reads pauses its engine (and its upstream connection
    /// stops being read) instead of running it at full speed.
    fn writable(&self) -> Option<BoxFuture<'_, ()>> {
        None
    }
}

/// Waits until `out` takes more events (at once when it does: no allocation, no await).
pub async fn room(out: &dyn Sink) {
    if let Some(wait) = out.writable() {
        wait.await;
    }
}

pub type Emitter = Arc<dyn Sink>;

/// The engine's work for one request, ready to run.
pub type Job = Box<dyn FnOnce(Emitter) -> BoxFuture<'static, Result<(), EngineError>> + Send>;

/// What an engine may know of the caller beyond the neutral input.
#[derive(Clone, Default)]
pub struct Caller {
    /// The caller's `Authorization` header (or `Bearer <handshake token>` on Socket.IO),
    /// passed to an upstream only when its route says `forward_authorization = true`.
    pub authorization: Option<String>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials never reach a log line.
        let auth = self.authorization.as_ref().map(|_| "<redacted>");
        f.debug_struct("Caller")
            .field("authorization", &auth)
            .finish()
    }
}

/// An engine, one per route.
pub trait Engine: Send + Sync {
    /// The engine kind, as in routes.toml (`script`, ...).
    fn kind(&self) -> &'static str;

    /// Checks the neutral input (options over their maxima, ...) before the stream starts;
    /// an error here refuses the request with 400 and starts nothing.
    fn prepare(&self, input: &Value, caller: &Caller) -> Result<Job, EngineError>;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The request asked for something the engine will not do (a 400 before the stream).
    #[error("option `{option}` {message}")]
    InvalidOption { option: String, message: String },
    /// The engine failed mid-stream: becomes an `error` event and `end {reason: "error"}`.
    #[error("{message}")]
    Failed { error_type: String, message: String },
}

/// A route's engine, as configured in routes.toml.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineSpec {
    Script(script::ScriptLimits),
    Ndjson(ndjson::NdjsonSpec),
    Chat(openai::ChatSpec),
}

/// A problem in an `engine` table: the field inside it, and the message.
pub type FieldError = (String, String);

/// Reads the keys of an engine table that `Own` (a kind's raw serde form) declares, and
/// hands back the rest when `common` (the upstream engines' shared keys) declares them;
/// `kind` aside, any other key is refused, naming every key the kind takes.
fn read_table<Own: serde::de::DeserializeOwned>(
    t: &toml::Table,
    common: &[&str],
) -> Result<(Own, toml::Table), FieldError> {
    let own_keys = crate::problem::fields_of::<Own>();
    let (mut own, mut rest) = (toml::Table::new(), toml::Table::new());
    for (key, value) in t {
        if key == "kind" {
            continue;
        } else if own_keys.contains(&key.as_str()) {
            own.insert(key.clone(), value.clone());
        } else if common.contains(&key.as_str()) {
            rest.insert(key.clone(), value.clone());
        } else {
            let known: Vec<&str> = own_keys.iter().chain(common).copied().collect();
            return Err((
                key.clone(),
                format!("unknown field (expected {})", known.join(", ")),
            ));
        }
    }
    let own = toml::Value::Table(own)
        .try_into()
        .map_err(|e| field_error(&e))?;
    Ok((own, rest))
}

/// A serde error of an engine table as the field it names and its message.
fn field_error(e: &impl std::fmt::Display) -> FieldError {
    let p = crate::problem::Problem::from_serde("", e);
    (p.field.unwrap_or_else(|| "kind".into()), p.message)
}

/// Reads one kind's `engine` table; an error names the field inside it.
type ReadTable = fn(&toml::Table) -> Result<EngineSpec, FieldError>;

/// Every engine kind and how its table is read: the one list `kind` is checked against.
const KINDS: [(&str, ReadTable); 4] = [
    ("script", |t| {
        script::ScriptLimits::from_table(t).map(EngineSpec::Script)
    }),
    ("ndjson", |t| {
        ndjson::NdjsonSpec::from_table(t).map(EngineSpec::Ndjson)
    }),
    ("openai", |t| {
        openai::ChatSpec::from_table(t, openai::Dialect::OpenAi).map(EngineSpec::Chat)
    }),
    ("ollama", |t| {
        openai::ChatSpec::from_table(t, openai::Dialect::Ollama).map(EngineSpec::Chat)
    }),
];

impl EngineSpec {
    /// Known engine kinds.
    pub fn kinds() -> impl Iterator<Item = &'static str> {
        KINDS.iter().map(|(name, _)| *name)
    }

    /// Parses the `engine` table of a route; errors name the field inside it.
    pub fn from_toml(v: &toml::Value) -> Result<EngineSpec, FieldError> {
        let known = || crate::problem::choices(EngineSpec::kinds());
        let Some(t) = v.as_table() else {
            return Err((
                "kind".into(),
                "`engine` must be a table such as { kind = \"script\" }".into(),
            ));
        };
        match t.get("kind") {
            Some(toml::Value::String(k)) => match KINDS.iter().find(|(name, _)| name == k) {
                Some((_, read)) => read(t),
                None => Err((
                    "kind".into(),
                    format!("unknown engine `{k}` (known: {})", known()),
                )),
            },
            Some(_) => Err(("kind".into(), "must be a string".into())),
            None => Err(("kind".into(), format!("missing (known: {})", known()))),
        }
    }

    /// The engine, ready to serve; fails when it cannot be (an upstream client that cannot
    /// be built), at start-up rather than on every request.
    pub fn build(&self) -> Result<Arc<dyn Engine>, EngineError> {
        Ok(match self {
            EngineSpec::Script(limits) => Arc::new(script::ScriptEngine::new(limits.clone())),
            EngineSpec::Ndjson(spec) => Arc::new(ndjson::NdjsonEngine::new(spec.clone())?),
            EngineSpec::Chat(spec) => Arc::new(openai::ChatEngine::new(spec.clone())?),
        })
    }

    /// The engine kind, as in routes.toml.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineSpec::Script(_) => "script",
            EngineSpec::Ndjson(_) => "ndjson",
            EngineSpec::Chat(spec) => match spec.dialect {
                openai::Dialect::OpenAi => "openai",
                openai::Dialect::Ollama => "ollama",
            },
        }
    }
}
