//! The routes file (`routes.toml`, SPEC section 2): each route's HTTP path, engine, and
//! legacy Socket.IO vocabulary, and each Socket.IO namespace's own behaviour (the event it
//! sends on connect), as data.
//!
//! Owns parsing and validating the file into [`Routes`], and the per-route mappings
//! ([`EmitMap`], request templates from [`template`]) and per-namespace settings
//! ([`Namespace`]). Every problem is reported with the file, the route (or namespace) and
//! the field, all at once. It does not encode anything for a wire: the
//! encoders ask it which rule applies to an event.

pub mod template;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::engine::EngineSpec;
use crate::event::EventKind;
pub use template::{ConnectContext, EmitContext, RequestContext, Template, TemplateError};

/// A route's name, from configuration (never from user input).
pub type RouteName = Arc<str>;

/// Socket.IO event names the bridge itself handles on every namespace.
pub const RESERVED_EVENTS: [&str; 9] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
    "join",
    "cancel",
    "resume",
];

/// Paths the bridge serves itself; a route may not take them.
pub const RESERVED_PATH_PREFIXES: [&str; 9] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/socket.io",
    "/admin",
    "/api/flags",
    "/api/streams",
    "/api/sessions",
    "/api/ai/cancel",
];

/// The keys of a `[route.socketio]` table.
const SOCKETIO_FIELDS: [&str; 6] = [
    "namespace",
    "request_event",
    "request",
    "emit",
    "emit_unmapped",
    "join_session",
];

/// The keys of a `[[namespace]]` table.
const NAMESPACE_FIELDS: [&str; 2] = ["name", "connect_event"];

/// The keys of a `[route.http]` table.
const HTTP_FIELDS: [&str; 6] = [
    "path",
    "sse_framing",
    "emit",
    "emit_unmapped",
    "request",
    "default_format",
];

/// How SSE frames are written for a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SseFraming {
    /// `id:`, `event:`, `data:` lines.
    #[default]
    Named,
    /// Only `data:` lines; heartbeats become `: heartbeat` comments.
    DataOnly,
}

/// One rule of an `emit` table: the event name to use and the payload template.
#[derive(Debug)]
pub struct EmitRule {
    pub event: Arc<str>,
    pub payload: Template,
}

/// What an `emit` table says about one neutral event type.
#[derive(Debug)]
pub enum Emit<'a> {
    /// Rendered through this rule.
    Mapped(&'a EmitRule),
    /// Sent in the neutral vocabulary.
    Neutral,
    /// Not sent at all.
    Dropped,
}

/// A whole `emit` table. Without one, every event goes out in the neutral vocabulary.
#[derive(Debug, Default)]
pub struct EmitMap {
    rules: [Option<EmitRule>; EventKind::ALL.len()],
    present: bool,
    unmapped: bool,
}

impl EmitMap {
    pub fn rule(&self, kind: EventKind) -> Emit<'_> {
        match &self.rules[kind.index()] {
            Some(rule) => Emit::Mapped(rule),
            None if !self.present || self.unmapped => Emit::Neutral,
            None => Emit::Dropped,
        }
    }

    /// True when the table maps events (a vocabulary other than the neutral one).
    pub fn is_mapped(&self) -> bool {
        self.present
    }
}

/// The response format of a route's POST for a client that states no preference
/// (`[route.http] default_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HttpFormat {
    /// `application/x-ndjson`.
    #[default]
    Ndjson,
    /// `text/event-stream`.
    Sse,
}

/// The HTTP side of a route.
#[derive(Debug)]
pub struct HttpSide {
    pub path: String,
    pub sse_framing: SseFraming,
    pub emit: EmitMap,
    /// Turns the request body into the neutral input (`$.auth` reads the request's
    /// subject); `None` takes the body as is.
    pub request: Option<Template>,
    /// The response format when `Accept` names none (absent, or only `*/*`).
    pub default_format: HttpFormat,
}

/// The Socket.IO side of a route.
#[derive(Debug)]
pub struct SocketIoSide {
    pub namespace: String,
    pub request_event: String,
    /// Turns the legacy payload into the neutral input; `None` takes the payload as is.
    pub request: Option<Template>,
    pub emit: EmitMap,
    /// Whether a socket whose request carries a session id joins that session's room, as
    /// after `join` (`join_room(session_id)` in a Flask-SocketIO handler).
    pub join_session: bool,
}

/// A Socket.IO namespace's own settings (`[[namespace]]`).
#[derive(Debug)]
pub struct Namespace {
    pub name: String,
    /// Sent to every socket that connects to the namespace.
    pub connect_event: Option<ConnectEvent>,
}

/// An event sent to every socket on connect (Flask-SocketIO apps' `connected`, say).
#[derive(Debug)]
pub struct ConnectEvent {
    pub event: Arc<str>,
    /// Reads the handshake auth (`$.auth.x`, never the token) and `$.now`.
    pub payload: Template,
}

/// One route: a named unit of migration.
#[derive(Debug)]
pub struct Route {
    pub name: RouteName,
    pub http: HttpSide,
    pub engine: EngineSpec,
    pub socketio: Option<SocketIoSide>,
}

/// Every route and namespace table of the routes file.
#[derive(Debug, Default)]
pub struct Routes {
    list: Vec<Arc<Route>>,
    namespaces: Vec<Namespace>,
}

impl Routes {
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.list.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Route>> {
        self.list.iter().find(|r| &*r.name == name)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The Socket.IO namespaces the routes use or `[[namespace]]` tables name, `/` always
    /// among them.
    pub fn namespaces(&self) -> Vec<String> {
        let mut out = vec!["/".to_string()];
        let named = self.namespaces.iter().map(|n| &n.name);
        let used = self
            .list
            .iter()
            .filter_map(|r| r.socketio.as_ref())
            .map(|s| &s.namespace);
        for name in named.chain(used) {
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
        out
    }

    /// A namespace's own settings, when a `[[namespace]]` table names it.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// Reads and validates a routes file.
    pub fn load(path: &Path) -> Result<Routes, RoutesError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RoutesError {
            problems: vec![Problem::file(
                &file,
                format!("cannot read the routes file: {e}"),
            )],
        })?;
        Routes::parse(&text, &file)
    }

    /// Validates routes from text; `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<Routes, RoutesError> {
        let mut problems = Vec::new();
        let doc: toml::Table = match toml::from_str(text) {
            Ok(doc) => doc,
            Err(e) => {
                return Err(RoutesError {
                    problems: vec![Problem::file(file, format!("not valid TOML: {e}"))],
                });
            }
        };
        for key in doc.keys() {
            if key != "route" && key != "namespace" {
                problems.push(Problem::file(
                    file,
                    format!(
                        "unknown top-level key `{key}` (expected [[route]] and [[namespace]] tables)"
                    ),
                ));
            }
        }
        let namespaces = parse_namespaces(doc.get("namespace"), file, &mut problems);
        let raw_routes = match doc.get("route") {
            Some(toml::Value::Array(a)) => a.clone(),
            Some(_) => {
                problems.push(Problem::file(
                    file,
                    "`route` must be an array of tables: write [[route]]".into(),
                ));
                Vec::new()
            }
            None => Vec::new(),
        };
        if raw_routes.is_empty() && problems.is_empty() {
            problems.push(Problem::file(file, "no [[route]] is defined".into()));
        }
        let mut list = Vec::new();
        for (i, raw) in raw_routes.iter().enumerate() {
            let mut p = RouteProblems {
                file,
                route: raw
                    .get("name")
                    .and_then(toml::Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("#{}", i + 1)),
                problems: &mut problems,
            };
            if let Some(route) = parse_route(raw, &mut p) {
                list.push(Arc::new(route));
            }
        }
        check_unique(&list, file, &mut problems);
        if problems.is_empty() {
            Ok(Routes { list, namespaces })
        } else {
            Err(RoutesError { problems })
        }
    }
}

/// One problem in a routes file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: String,
    pub route: Option<String>,
    /// The `[[namespace]]` table the problem is in.
    pub namespace: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    fn file(file: &str, message: String) -> Problem {
        Problem {
            file: file.to_string(),
            route: None,
            namespace: None,
            field: None,
            message,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(r) = &self.route {
            write!(f, ": route \"{r}\"")?;
        }
        if let Some(n) = &self.namespace {
            write!(f, ": namespace \"{n}\"")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a routes file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct RoutesError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for RoutesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{n} problem{} in the routes file:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

struct RouteProblems<'a> {
    file: &'a str,
    route: String,
    problems: &'a mut Vec<Problem>,
}

impl RouteProblems<'_> {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            route: Some(self.route.clone()),
            namespace: None,
            field: Some(field.into()),
            message: message.into(),
        });
    }
}

fn parse_route(raw: &toml::Value, p: &mut RouteProblems<'_>) -> Option<Route> {
    let Some(table) = raw.as_table() else {
        p.add("route", "each [[route]] must be a table");
        return None;
    };
    for key in table.keys() {
        if !["name", "http", "engine", "socketio"].contains(&key.as_str()) {
            p.add(
                key.as_str(),
                "unknown field (expected name, http, engine, socketio)",
            );
        }
    }
    let name = match table.get("name") {
        Some(toml::Value::String(s)) if valid_route_name(s) => Some(s.clone()),
        Some(_) => {
            p.add(
                "name",
                "must be 1 to 64 characters of a-z, 0-9, '_' or '-', starting with a letter",
            );
            None
        }
        None => {
            p.add("name", "missing");
            None
        }
    };
    let http = parse_http(table.get("http"), p);
    let engine = match table.get("engine") {
        Some(v) => match EngineSpec::from_toml(v) {
            Ok(e) => Some(e),
            Err((field, message)) => {
                p.add(format!("engine.{field}"), message);
                None
            }
        },
        None => {
            p.add("engine", "missing (e.g. engine = { kind = \"script\" })");
            None
        }
    };
    let socketio = match table.get("socketio") {
        None => Some(None),
        Some(v) => parse_socketio(v, p).map(Some),
    };
    Some(Route {
        name: name?.into(),
        http: http?,
        engine: engine?,
        socketio: socketio?,
    })
}

/// Route names: 1 to 64 of a-z, 0-9, `_`, `-`, starting with a letter.
pub fn valid_route_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// A `[route.http]` key that takes one of a few names: the first choice when absent,
/// `None` (with the problem reported) when it names none of them.
fn one_of<T: Copy>(
    table: Option<&toml::Table>,
    key: &str,
    what: &str,
    choices: &[(&str, T)],
    p: &mut RouteProblems<'_>,
) -> Option<T> {
    let value = match table.and_then(|t| t.get(key)) {
        None => return choices.first().map(|c| c.1),
        Some(v) => v,
    };
    let found = value
        .as_str()
        .and_then(|s| choices.iter().find(|c| c.0 == s).map(|c| c.1));
    if found.is_none() {
        let names: Vec<String> = choices.iter().map(|c| format!("\"{}\"", c.0)).collect();
        p.add(
            format!("http.{key}"),
            format!("`{value}` is not {what} (expected {})", names.join(" or ")),
        );
    }
    found
}

fn parse_http(v: Option<&toml::Value>, p: &mut RouteProblems<'_>) -> Option<HttpSide> {
    let (path, table) = match v {
        Some(toml::Value::String(s)) => (Some(s.clone()), None),
        Some(toml::Value::Table(t)) => {
            for key in t.keys() {
                if !HTTP_FIELDS.contains(&key.as_str()) {
                    p.add(
                        format!("http.{key}"),
                        format!("unknown field (expected {})", HTTP_FIELDS.join(", ")),
                    );
                }
            }
            match t.get("path") {
                Some(toml::Value::String(s)) => (Some(s.clone()), Some(t)),
                _ => {
                    p.add("http.path", "missing: the HTTP path of the route");
                    (None, Some(t))
                }
            }
        }
        Some(_) => {
            p.add(
                "http",
                "must be the HTTP path, or a table with `path` (and sse_framing, emit, request, default_format)",
            );
            return None;
        }
        None => {
            p.add("http", "missing: the HTTP path of the route");
            return None;
        }
    };
    let mut ok = true;
    if let Some(path) = &path {
        // A segment starting with ':' is a 0.7-style capture that axum refuses (it panics).
        if !path.starts_with('/')
            || path.contains(['?', '#', ' ', '{', '}', '*'])
            || path.split('/').any(|segment| segment.starts_with(':'))
        {
            p.add(
                "http",
                format!(
                    "`{path}` must be an absolute path without '?', '#', spaces or patterns \
                     (no segment may start with ':')"
                ),
            );
            ok = false;
        } else if let Some(r) = RESERVED_PATH_PREFIXES
            .iter()
            .find(|r| path == *r || path.starts_with(&format!("{r}/")))
        {
            p.add(
                "http",
                format!("`{path}` is taken by the bridge itself ({r})"),
            );
            ok = false;
        }
    }
    let sse_framing = one_of(
        table,
        "sse_framing",
        "a framing",
        &[
            ("named", SseFraming::Named),
            ("data_only", SseFraming::DataOnly),
        ],
        p,
    )
    .unwrap_or_else(|| {
        ok = false;
        SseFraming::Named
    });
    let default_format = one_of(
        table,
        "default_format",
        "a response format",
        &[("ndjson", HttpFormat::Ndjson), ("sse", HttpFormat::Sse)],
        p,
    )
    .unwrap_or_else(|| {
        ok = false;
        HttpFormat::Ndjson
    });
    let request = parse_request_template(table.and_then(|t| t.get("request")), "http", p);
    let emit = parse_emit_map(
        table.and_then(|t| t.get("emit")),
        table.and_then(|t| t.get("emit_unmapped")),
        "http",
        false,
        p,
    );
    match (path, request, emit, ok) {
        (Some(path), Some(request), Some(emit), true) => Some(HttpSide {
            path,
            sse_framing,
            emit,
            request,
            default_format,
        }),
        _ => None,
    }
}

/// Compiles a side's optional `request` template; `None` when it is invalid (reported).
fn parse_request_template(
    v: Option<&toml::Value>,
    side: &str,
    p: &mut RouteProblems<'_>,
) -> Option<Option<Template>> {
    match v {
        None => Some(None),
        Some(v) => match Template::compile_request(&to_json(v)) {
            Ok(t) => Some(Some(t)),
            Err(e) => {
                p.add(
                    format!("{side}.request.{}", e.location).trim_end_matches('.'),
                    e.message,
                );
                None
            }
        },
    }
}

fn parse_socketio(v: &toml::Value, p: &mut RouteProblems<'_>) -> Option<SocketIoSide> {
    let Some(t) = v.as_table() else {
        p.add("socketio", "must be a table");
        return None;
    };
    let mut ok = true;
    for key in t.keys() {
        if !SOCKETIO_FIELDS.contains(&key.as_str()) {
            p.add(
                format!("socketio.{key}"),
                format!("unknown field (expected {})", SOCKETIO_FIELDS.join(", ")),
            );
            ok = false;
        }
    }
    let join_session = match t.get("join_session") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(_) => {
            p.add("socketio.join_session", "must be true or false");
            ok = false;
            false
        }
    };
    let namespace = match t.get("namespace") {
        None => "/".to_string(),
        Some(toml::Value::String(s)) if valid_namespace(s) => s.clone(),
        Some(_) => {
            p.add(
                "socketio.namespace",
                "must be a namespace path starting with '/'",
            );
            ok = false;
            "/".to_string()
        }
    };
    let request_event = match t.get("request_event") {
        Some(toml::Value::String(s)) if RESERVED_EVENTS.contains(&s.as_str()) => {
            p.add(
                "socketio.request_event",
                format!("`{s}` is reserved (the bridge handles {RESERVED_EVENTS:?} itself)"),
            );
            None
        }
        Some(toml::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => {
            p.add(
                "socketio.request_event",
                "missing: the Socket.IO event that starts a stream",
            );
            None
        }
    };
    let request = parse_request_template(t.get("request"), "socketio", p);
    let emit = parse_emit_map(t.get("emit"), t.get("emit_unmapped"), "socketio", true, p);
    match (request_event, request, emit, ok) {
        (Some(request_event), Some(request), Some(emit), true) => Some(SocketIoSide {
            namespace,
            request_event,
            request,
            emit,
            join_session,
        }),
        _ => None,
    }
}

fn valid_namespace(s: &str) -> bool {
    s.starts_with('/') && !s.contains([' ', '?', '#'])
}

/// Parses the `[[namespace]]` tables: `name` and an optional
/// `connect_event = { event = "...", payload = <connect template> }`.
fn parse_namespaces(
    v: Option<&toml::Value>,
    file: &str,
    problems: &mut Vec<Problem>,
) -> Vec<Namespace> {
    let raw = match v {
        None => return Vec::new(),
        Some(toml::Value::Array(a)) => a,
        Some(_) => {
            problems.push(Problem::file(
                file,
                "`namespace` must be an array of tables: write [[namespace]]".into(),
            ));
            return Vec::new();
        }
    };
    let mut out: Vec<Namespace> = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in raw.iter().enumerate() {
        let label = raw
            .get("name")
            .and_then(toml::Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", i + 1));
        let before = problems.len();
        let mut add = |field: &str, message: String| {
            problems.push(Problem {
                file: file.to_string(),
                route: None,
                namespace: Some(label.clone()),
                field: Some(field.to_string()),
                message,
            })
        };
        let Some(t) = raw.as_table() else {
            add("namespace", "each [[namespace]] must be a table".into());
            continue;
        };
        for key in t.keys() {
            if !NAMESPACE_FIELDS.contains(&key.as_str()) {
                add(
                    key,
                    format!("unknown field (expected {})", NAMESPACE_FIELDS.join(", ")),
                );
            }
        }
        let name = match t.get("name") {
            Some(toml::Value::String(s)) if valid_namespace(s) => {
                if !seen.insert(s.clone()) {
                    add("name", "another [[namespace]] has this name".into());
                }
                s.clone()
            }
            Some(_) => {
                add(
                    "name",
                    "must be a namespace path starting with '/' (\"/\" for the default one)".into(),
                );
                continue;
            }
            None => {
                add("name", "missing: the namespace path, e.g. \"/\"".into());
                continue;
            }
        };
        let connect_event = match t.get("connect_event") {
            None => None,
            Some(v) => parse_connect_event(v, &mut add),
        };
        if problems.len() == before {
            out.push(Namespace {
                name,
                connect_event,
            });
        }
    }
    out
}

/// `connect_event = { event = "...", payload = <connect template> }`.
fn parse_connect_event(
    v: &toml::Value,
    add: &mut impl FnMut(&str, String),
) -> Option<ConnectEvent> {
    let Some(t) = v.as_table() else {
        add(
            "connect_event",
            "must be a table { event = \"...\", payload = {...} }".into(),
        );
        return None;
    };
    for k in t.keys() {
        if k != "event" && k != "payload" {
            add(
                &format!("connect_event.{k}"),
                "unknown field (expected event, payload)".into(),
            );
        }
    }
    let event: Option<Arc<str>> = match t.get("event") {
        Some(toml::Value::String(s)) if RESERVED_EVENTS.contains(&s.as_str()) => {
            add("connect_event.event", format!("`{s}` is reserved"));
            None
        }
        Some(toml::Value::String(s)) if s.chars().any(char::is_control) => {
            add(
                "connect_event.event",
                "must not contain line breaks or control characters".into(),
            );
            None
        }
        Some(toml::Value::String(s)) if !s.is_empty() => Some(s.as_str().into()),
        _ => {
            add(
                "connect_event.event",
                "missing: the event name to send on connect".into(),
            );
            None
        }
    };
    // Without a payload the event carries an empty object.
    let payload = match t.get("payload") {
        None => Template::compile_connect(&Value::Object(serde_json::Map::new())).ok(),
        Some(v) => match Template::compile_connect(&to_json(v)) {
            Ok(t) => Some(t),
            Err(e) => {
                add(
                    format!("connect_event.payload.{}", e.location).trim_end_matches('.'),
                    e.message,
                );
                None
            }
        },
    };
    Some(ConnectEvent {
        event: event?,
        payload: payload?,
    })
}

/// Parses `emit = { <neutral type> = { event = "...", payload = <template> } }`.
/// On Socket.IO `event` is required; over HTTP it defaults to the neutral name.
fn parse_emit_map(
    v: Option<&toml::Value>,
    unmapped: Option<&toml::Value>,
    side: &str,
    event_required: bool,
    p: &mut RouteProblems<'_>,
) -> Option<EmitMap> {
    let unmapped = match unmapped {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(_) => {
            p.add(format!("{side}.emit_unmapped"), "must be true or false");
            return None;
        }
    };
    let Some(v) = v else {
        return Some(EmitMap {
            unmapped,
            ..EmitMap::default()
        });
    };
    let Some(table) = v.as_table() else {
        p.add(
            format!("{side}.emit"),
            "must be a table of neutral event types",
        );
        return None;
    };
    let mut map = EmitMap {
        present: true,
        unmapped,
        ..EmitMap::default()
    };
    let mut ok = true;
    for (key, rule) in table {
        let field = format!("{side}.emit.{key}");
        let Some(kind) = EventKind::parse(key) else {
            p.add(
                field,
                format!(
                    "`{key}` is not a neutral event type (expected one of {})",
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                ),
            );
            ok = false;
            continue;
        };
        let Some(rt) = rule.as_table() else {
            p.add(
                field,
                "must be a table { event = \"...\", payload = {...} }",
            );
            ok = false;
            continue;
        };
        for k in rt.keys() {
            if k != "event" && k != "payload" {
                p.add(
                    format!("{field}.{k}"),
                    "unknown field (expected event, payload)",
                );
                ok = false;
            }
        }
        let event: Option<Arc<str>> = match rt.get("event") {
            Some(toml::Value::String(s)) if RESERVED_EVENTS.contains(&s.as_str()) => {
                p.add(format!("{field}.event"), format!("`{s}` is reserved"));
                None
            }
            Some(toml::Value::String(s)) if s.chars().any(char::is_control) => {
                p.add(
                    format!("{field}.event"),
                    "must not contain line breaks or control characters",
                );
                None
            }
            Some(toml::Value::String(s)) if !s.is_empty() => Some(s.as_str().into()),
            None if !event_required => Some(kind.as_str().into()),
            _ => {
                p.add(format!("{field}.event"), "missing: the event name to emit");
                None
            }
        };
        let payload = match rt.get("payload") {
            None => {
                p.add(format!("{field}.payload"), "missing: the payload template");
                None
            }
            Some(v) => match Template::compile_emit(&to_json(v)) {
                Ok(t) => Some(t),
                Err(e) => {
                    p.add(
                        format!("{field}.payload.{}", e.location).trim_end_matches('.'),
                        e.message,
                    );
                    None
                }
            },
        };
        match (event, payload) {
            (Some(event), Some(payload)) => {
                map.rules[kind.index()] = Some(EmitRule { event, payload })
            }
            _ => ok = false,
        }
    }
    ok.then_some(map)
}

fn check_unique(list: &[Arc<Route>], file: &str, problems: &mut Vec<Problem>) {
    let mut names = HashSet::new();
    let mut paths: HashMap<&str, &str> = HashMap::new();
    let mut events: HashMap<(&str, &str), &str> = HashMap::new();
    for r in list {
        let mut add = |field: &str, message: String| {
            problems.push(Problem {
                file: file.to_string(),
                route: Some(r.name.to_string()),
                namespace: None,
                field: Some(field.to_string()),
                message,
            })
        };
        if !names.insert(&*r.name) {
            add("name", "duplicate route name".into());
        }
        if let Some(other) = paths.insert(&r.http.path, &r.name) {
            add(
                "http",
                format!("path {} is also the path of route \"{other}\"", r.http.path),
            );
        }
        if let Some(s) = &r.socketio
            && let Some(other) = events.insert((&s.namespace, &s.request_event), &r.name)
        {
            add(
                "socketio.request_event",
                format!(
                    "event `{}` on namespace {} is also the request event of route \"{other}\"",
                    s.request_event, s.namespace
                ),
            );
        }
    }
}

fn to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect::<serde_json::Map<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = r#"
[[route]]
name = "chat"
http = "/api/ai/chat/unified"
engine = { kind = "script" }
[route.socketio]
request_event = "chat_message"
request = { messages = [{ role = "user", content = "$.message" }], session_id = "$.session_id" }
[route.socketio.emit]
chunk = { event = "chat_chunk", payload = { chunk = "$.data.text" } }
"#;

    #[test]
    fn parses_a_route() {
        let routes = Routes::parse(CHAT, "routes.toml").unwrap();
        let chat = routes.get("chat").unwrap();
        assert_eq!(chat.http.path, "/api/ai/chat/unified");
        let sio = chat.socketio.as_ref().unwrap();
        assert_eq!(sio.namespace, "/");
        assert!(
            matches!(sio.emit.rule(EventKind::Chunk), Emit::Mapped(r) if &*r.event == "chat_chunk")
        );
        assert!(matches!(sio.emit.rule(EventKind::End), Emit::Dropped));
        assert!(matches!(chat.http.emit.rule(EventKind::End), Emit::Neutral));
        assert_eq!(routes.namespaces(), vec!["/"]);
    }

    #[test]
    fn http_table_form() {
        let text = r#"
[[route]]
name = "old"
engine = { kind = "script" }
[route.http]
path = "/v1/old"
sse_framing = "data_only"
emit_unmapped = true
emit = { chunk = { payload = { delta = "$.data.text" } } }
"#;
        let routes = Routes::parse(text, "r.toml").unwrap();
        let r = routes.get("old").unwrap();
        assert_eq!(r.http.sse_framing, SseFraming::DataOnly);
        assert!(
            matches!(r.http.emit.rule(EventKind::Chunk), Emit::Mapped(rule) if &*rule.event == "chunk")
        );
        assert!(matches!(r.http.emit.rule(EventKind::End), Emit::Neutral));
        assert!(r.socketio.is_none());
    }

    #[test]
    fn http_request_template_and_default_format() {
        let text = r#"
[[route]]
name = "legacy-sse"
engine = { kind = "script" }
[route.http]
path = "/api/v1/chat/stream"
request = { messages = [{ role = "user", content = "$.message" }], session_id = "$.session_id", user = "$.auth.user_id" }
default_format = "sse"
"#;
        let routes = Routes::parse(text, "r.toml").unwrap();
        let http = &routes.get("legacy-sse").unwrap().http;
        assert_eq!(http.default_format, HttpFormat::Sse);
        let input = http
            .request
            .as_ref()
            .unwrap()
            .render_request(&RequestContext {
                payload: &serde_json::json!({"message": "hi", "session_id": "s"}),
                auth: &serde_json::json!({"user_id": "u"}),
            });
        assert_eq!(
            input,
            serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "session_id": "s", "user": "u"})
        );
        let plain = Routes::parse(CHAT, "r.toml").unwrap();
        let http = &plain.get("chat").unwrap().http;
        assert_eq!(http.default_format, HttpFormat::Ndjson);
        assert!(http.request.is_none());
    }

    #[test]
    fn bad_http_request_and_default_format_name_their_field() {
        let text = r#"
[[route]]
name = "a"
engine = { kind = "script" }
[route.http]
path = "/a"
request = { who = "$.auth.token", m = "$.x..y" }
default_format = "html"
"#;
        let err = Routes::parse(text, "routes.toml").unwrap_err();
        let all = err.to_string();
        assert!(
            all.contains("routes.toml: route \"a\", field `http.default_format`: `\"html\"` is not a response format"),
            "{all}"
        );
        assert!(all.contains("field `http.request."), "{all}");
    }

    #[test]
    fn namespaces_and_join_session() {
        let text = format!(
            "{}{}",
            CHAT.replace(
                "[route.socketio]\n",
                "[route.socketio]\njoin_session = true\n"
            ),
            r#"
[[namespace]]
name = "/"
connect_event = { event = "connected", payload = { message = "hi", timestamp = "$.now", user = "$.auth.user_id" } }

[[namespace]]
name = "/lobby"
connect_event = { event = "welcome" }
"#
        );
        let routes = Routes::parse(&text, "r.toml").unwrap();
        assert!(
            routes
                .get("chat")
                .unwrap()
                .socketio
                .as_ref()
                .unwrap()
                .join_session
        );
        assert_eq!(routes.namespaces(), vec!["/", "/lobby"]);
        let root = routes
            .namespace("/")
            .unwrap()
            .connect_event
            .as_ref()
            .unwrap();
        assert_eq!(&*root.event, "connected");
        assert!(root.payload.uses_now());
        let lobby = routes
            .namespace("/lobby")
            .unwrap()
            .connect_event
            .as_ref()
            .unwrap();
        assert_eq!(
            lobby.payload.render_connect(&ConnectContext {
                auth: &Value::Null,
                now: ""
            }),
            serde_json::json!({})
        );
        assert!(routes.namespace("/other").is_none());
        let plain = Routes::parse(CHAT, "r.toml").unwrap();
        assert!(
            !plain
                .get("chat")
                .unwrap()
                .socketio
                .as_ref()
                .unwrap()
                .join_session
        );
    }

    #[test]
    fn bad_namespaces_and_join_session_name_their_field() {
        let text = format!(
            "{}{}",
            CHAT.replace(
                "[route.socketio]\n",
                "[route.socketio]\njoin_session = \"yes\"\n"
            ),
            r#"
[[namespace]]
name = "/"
connect_event = { event = "connect", payload = { who = "$.auth.token", m = "$.message" } }
color = "blue"

[[namespace]]
name = "/"

[[namespace]]
name = "lobby"
"#
        );
        let err = Routes::parse(&text, "routes.toml").unwrap_err();
        let all = err.to_string();
        for want in [
            "routes.toml: route \"chat\", field `socketio.join_session`: must be true or false",
            "routes.toml: namespace \"/\", field `connect_event.event`: `connect` is reserved",
            "routes.toml: namespace \"/\", field `connect_event.payload.",
            "routes.toml: namespace \"/\", field `color`: unknown field",
            "routes.toml: namespace \"/\", field `name`: another [[namespace]] has this name",
            "routes.toml: namespace \"lobby\", field `name`: must be a namespace path",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn every_problem_is_listed_with_file_route_and_field() {
        let text = r#"
[[route]]
name = "a"
http = "/x"
engine = { kind = "nope" }
[route.socketio]
request_event = "go"
[route.socketio.emit]
chunk = { event = "c", payload = { t = "$.bogus.text" } }
bogus = { event = "b", payload = {} }

[[route]]
name = "b"
http = "/x"
engine = { kind = "script" }
[route.socketio]
request_event = "join"

[[route]]
name = "c"
http = "/healthz"
engine = { kind = "script" }
"#;
        let err = Routes::parse(text, "routes.toml").unwrap_err();
        let all = err.to_string();
        let expect = [
            ("a", "engine.kind"),
            ("a", "socketio.emit.chunk.payload"),
            ("a", "socketio.emit.bogus"),
            ("b", "socketio.request_event"),
            ("c", "http"),
        ];
        for (route, field) in expect {
            assert!(
                err.problems
                    .iter()
                    .any(|p| p.route.as_deref() == Some(route)
                        && p.field.as_deref().is_some_and(|f| f.starts_with(field))
                        && p.file == "routes.toml"),
                "missing {route}/{field} in:\n{all}"
            );
        }
        assert!(
            all.contains("routes.toml: route \"a\", field `engine.kind`"),
            "{all}"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let text = r#"
[[route]]
name = "a"
http = "/x"
engine = { kind = "script" }
socketio = { request_event = "go" }
[[route]]
name = "b"
http = "/x"
engine = { kind = "script" }
socketio = { request_event = "go" }
"#;
        let err = Routes::parse(text, "f").unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.to_string().contains("also the path of route \"a\""));
        assert!(
            err.to_string()
                .contains("also the request event of route \"a\"")
        );
    }

    #[test]
    fn event_names_cannot_break_the_framing() {
        let text = "[[route]]\nname = \"a\"\nengine = { kind = \"script\" }\n[route.http]\npath = \"/a\"\nemit = { chunk = { event = \"x\\ny\", payload = {} } }\n";
        let err = Routes::parse(text, "f").unwrap_err();
        assert!(err.to_string().contains("http.emit.chunk.event"), "{err}");
    }

    /// Found by the `routes` fuzz target: `/:pi/x` passed validation, then axum panicked on
    /// it when `serve` built the router.
    #[test]
    fn colon_segments_are_refused() {
        for path in ["/:id", "/api/:x/y", "/a/:"] {
            let text = format!(
                "[[route]]\nname = \"a\"\nhttp = \"{path}\"\nengine = {{ kind = \"script\" }}\n"
            );
            let err = Routes::parse(&text, "f").unwrap_err();
            assert!(err.to_string().contains("field `http`"), "{path}: {err}");
        }
        let ok = "[[route]]\nname = \"a\"\nhttp = \"/a:b/c:\"\nengine = { kind = \"script\" }\n";
        assert!(
            Routes::parse(ok, "f").is_ok(),
            "a colon inside a segment is a literal"
        );
    }

    #[test]
    fn bad_toml_names_the_file() {
        let err = Routes::parse("[[route]\n", "my.toml").unwrap_err();
        assert!(err.to_string().contains("my.toml"));
    }
}
