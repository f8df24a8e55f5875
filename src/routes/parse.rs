//! Reading `routes.toml`: each table into its raw serde form (unknown fields refused, the
//! expected ones named from the form itself), then validated into the model of
//! [`super`]. Every problem of every table is reported, in the [`Problem`] shape, with
//! the file, the route or namespace, and the field.
//!
//! Owns the raw forms and the rules that are not types: names, paths, reserved events and
//! paths, uniqueness, templates. It does not encode for a wire or touch engines beyond
//! handing their table to [`EngineSpec::from_toml`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    ConnectEvent, EmitMap, EmitRule, HttpFormat, HttpSide, Namespace, RESERVED_EVENTS, Route,
    Routes, SocketIoSide, SseFraming, Template, paths,
};
use crate::engine::EngineSpec;
use crate::event::EventKind;
use crate::problem::{Problem, Problems, Scope, choices, fields_of};

/// What the headings of routes problems call the file.
pub const WHAT: &str = "the routes file";

/// The file: `[[route]]` and `[[namespace]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    route: Vec<toml::Value>,
    #[serde(default)]
    namespace: Vec<toml::Value>,
}

/// A `[[route]]`; its sub-tables are read on their own, so that a problem in one does not
/// hide those of another.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<toml::Value>,
    http: Option<toml::Value>,
    engine: Option<toml::Value>,
    socketio: Option<toml::Value>,
}

/// `[route.http]` in its table form (`http = "/path"` is the short form).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    path: Option<String>,
    sse_framing: Option<toml::Value>,
    emit: Option<toml::Table>,
    #[serde(default)]
    emit_unmapped: bool,
    request: Option<toml::Value>,
    default_format: Option<toml::Value>,
}

/// `[route.socketio]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocketIo {
    namespace: Option<String>,
    request_event: Option<String>,
    request: Option<toml::Value>,
    emit: Option<toml::Table>,
    #[serde(default)]
    emit_unmapped: bool,
    #[serde(default)]
    join_session: bool,
}

/// One rule of an `emit` table, and a namespace's `connect_event`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEventRule {
    event: Option<String>,
    payload: Option<toml::Value>,
}

/// A `[[namespace]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    name: Option<String>,
    connect_event: Option<toml::Value>,
}

/// Where problems go, and the table they are in.
struct Report<'a> {
    list: &'a mut Vec<Problem>,
    scope: Option<Scope>,
}

impl Report<'_> {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let mut p = Problem::field(field, message);
        p.scope = self.scope.clone();
        self.list.push(p);
    }

    fn file(&mut self, message: impl Into<String>) {
        self.list.push(Problem::new(message));
    }

    /// Reads a table (found at `field`) into its raw form: each unknown key is a problem
    /// of its own and is left out, so the known ones are still read and checked.
    fn table<T: DeserializeOwned>(&mut self, field: &str, value: toml::Value) -> Option<T> {
        let known = fields_of::<T>();
        let value = match value {
            toml::Value::Table(mut t) if !known.is_empty() => {
                let unknown: Vec<String> = t
                    .keys()
                    .filter(|k| !known.contains(&k.as_str()))
                    .cloned()
                    .collect();
                for key in unknown {
                    t.remove(&key);
                    let at = if field.is_empty() {
                        key
                    } else {
                        format!("{field}.{key}")
                    };
                    self.add(at, format!("unknown field (expected {})", known.join(", ")));
                }
                toml::Value::Table(t)
            }
            other => other,
        };
        self.read(field, value)
    }

    /// Reads `value` (found at `field`) into its raw form; a serde error is a problem.
    fn read<T: DeserializeOwned>(&mut self, field: &str, value: toml::Value) -> Option<T> {
        match value.try_into() {
            Ok(t) => Some(t),
            Err(e) => {
                let mut p = Problem::from_serde(field, &e);
                p.scope = self.scope.clone();
                self.list.push(p);
                None
            }
        }
    }

    fn count(&self) -> usize {
        self.list.len()
    }
}

/// Validates routes from text; `file` names it in every problem.
pub fn parse(text: &str, file: &str) -> Result<Routes, Problems> {
    let mut list = Vec::new();
    let routes = parse_all(text, &mut list);
    match routes {
        Some(routes) if list.is_empty() => Ok(routes),
        _ => Err(Problems::new(WHAT, list).in_file(file)),
    }
}

fn parse_all(text: &str, list: &mut Vec<Problem>) -> Option<Routes> {
    let mut r = Report { list, scope: None };
    let doc: toml::Table = match toml::from_str(text) {
        Ok(doc) => doc,
        Err(e) => {
            r.file(format!("not valid TOML: {e}"));
            return None;
        }
    };
    let raw: RawFile = r.table("", toml::Value::Table(doc))?;
    if raw.route.is_empty() {
        r.file("no [[route]] is defined");
    }
    let namespaces = parse_namespaces(raw.namespace, r.list);
    let mut routes = Vec::new();
    for (i, value) in raw.route.into_iter().enumerate() {
        let label = value
            .get("name")
            .and_then(toml::Value::as_str)
            .map_or_else(|| format!("#{}", i + 1), str::to_string);
        let mut r = Report {
            list: r.list,
            scope: Some(Scope::Route(label)),
        };
        if let Some(route) = parse_route(value, &mut r) {
            routes.push(Arc::new(route));
        }
    }
    check_unique(&routes, r.list);
    Some(Routes {
        list: routes,
        namespaces,
    })
}

fn parse_route(value: toml::Value, r: &mut Report<'_>) -> Option<Route> {
    let raw: RawRoute = r.table("", value)?;
    let name = match raw.name {
        Some(toml::Value::String(s)) if valid_route_name(&s) => Some(s),
        Some(_) => {
            r.add(
                "name",
                "must be 1 to 64 characters of a-z, 0-9, '_' or '-', starting with a letter",
            );
            None
        }
        None => {
            r.add("name", "missing");
            None
        }
    };
    let http = match raw.http {
        Some(v) => parse_http(v, r),
        None => {
            r.add("http", "missing: the HTTP path of the route");
            None
        }
    };
    let engine = match raw.engine {
        Some(v) => EngineSpec::from_toml(&v)
            .map_err(|(field, message)| r.add(format!("engine.{field}"), message))
            .ok(),
        None => {
            r.add("engine", "missing (e.g. engine = { kind = \"script\" })");
            None
        }
    };
    let socketio = match raw.socketio {
        None => Some(None),
        Some(v) => parse_socketio(v, r).map(Some),
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

fn parse_http(value: toml::Value, r: &mut Report<'_>) -> Option<HttpSide> {
    let raw = match value {
        toml::Value::String(path) => RawHttp {
            path: Some(path),
            sse_framing: None,
            emit: None,
            emit_unmapped: false,
            request: None,
            default_format: None,
        },
        v @ toml::Value::Table(_) => r.table("http", v)?,
        _ => {
            r.add(
                "http",
                "must be the HTTP path, or a table with `path` (and sse_framing, emit, request, default_format)",
            );
            return None;
        }
    };
    let before = r.count();
    let path = match raw.path {
        Some(path) => check_path(path, r),
        None => {
            r.add("http.path", "missing: the HTTP path of the route");
            None
        }
    };
    let sse_framing = match raw.sse_framing {
        None => Some(SseFraming::default()),
        Some(v) => r.read::<SseFraming>("http.sse_framing", v),
    };
    let default_format = match raw.default_format {
        None => Some(HttpFormat::default()),
        Some(v) => r.read::<HttpFormat>("http.default_format", v),
    };
    let request = parse_request_template(raw.request, "http", r);
    let emit = parse_emit_map(raw.emit, raw.emit_unmapped, "http", false, r);
    if r.count() != before {
        return None;
    }
    Some(HttpSide {
        path: path?,
        sse_framing: sse_framing?,
        emit: emit?,
        request: request?,
        default_format: default_format?,
    })
}

/// An absolute path axum can route, not one the bridge serves itself.
fn check_path(path: String, r: &mut Report<'_>) -> Option<String> {
    // A segment starting with ':' is a 0.7-style capture that axum refuses (it panics).
    if !path.starts_with('/')
        || path.contains(['?', '#', ' ', '{', '}', '*'])
        || path.split('/').any(|segment| segment.starts_with(':'))
    {
        r.add(
            "http",
            format!(
                "`{path}` must be an absolute path without '?', '#', spaces or patterns \
                 (no segment may start with ':')"
            ),
        );
        None
    } else if let Some(taken) = paths::RESERVED
        .iter()
        .find(|p| path == **p || path.starts_with(&format!("{p}/")))
    {
        r.add(
            "http",
            format!("`{path}` is taken by the bridge itself ({taken})"),
        );
        None
    } else {
        Some(path)
    }
}

/// Compiles a side's optional `request` template; `None` when it is invalid (reported).
fn parse_request_template(
    value: Option<toml::Value>,
    side: &str,
    r: &mut Report<'_>,
) -> Option<Option<Template>> {
    let Some(value) = value else {
        return Some(None);
    };
    match Template::compile_request(&to_json(&value)) {
        Ok(t) => Some(Some(t)),
        Err(e) => {
            r.add(
                format!("{side}.request.{}", e.location).trim_end_matches('.'),
                e.message,
            );
            None
        }
    }
}

fn parse_socketio(value: toml::Value, r: &mut Report<'_>) -> Option<SocketIoSide> {
    let raw: RawSocketIo = r.table("socketio", value)?;
    let before = r.count();
    let namespace = match raw.namespace {
        None => "/".to_string(),
        Some(s) if valid_namespace(&s) => s,
        Some(_) => {
            r.add(
                "socketio.namespace",
                "must be a namespace path starting with '/'",
            );
            "/".to_string()
        }
    };
    let request_event = match raw.request_event {
        Some(s) if RESERVED_EVENTS.contains(&s.as_str()) => {
            r.add(
                "socketio.request_event",
                format!("`{s}` is reserved (the bridge handles {RESERVED_EVENTS:?} itself)"),
            );
            None
        }
        Some(s) if !s.is_empty() => Some(s),
        _ => {
            r.add(
                "socketio.request_event",
                "missing: the Socket.IO event that starts a stream",
            );
            None
        }
    };
    let request = parse_request_template(raw.request, "socketio", r);
    let emit = parse_emit_map(raw.emit, raw.emit_unmapped, "socketio", true, r);
    if r.count() != before {
        return None;
    }
    Some(SocketIoSide {
        namespace,
        request_event: request_event?,
        request: request?,
        emit: emit?,
        join_session: raw.join_session,
    })
}

fn valid_namespace(s: &str) -> bool {
    s.starts_with('/') && !s.contains([' ', '?', '#'])
}

/// The `[[namespace]]` tables: `name` and an optional
/// `connect_event = { event = "...", payload = <connect template> }`.
fn parse_namespaces(raw: Vec<toml::Value>, list: &mut Vec<Problem>) -> Vec<Namespace> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, value) in raw.into_iter().enumerate() {
        let label = value
            .get("name")
            .and_then(toml::Value::as_str)
            .map_or_else(|| format!("#{}", i + 1), str::to_string);
        let mut r = Report {
            list: &mut *list,
            scope: Some(Scope::Namespace(label)),
        };
        let before = r.count();
        let Some(raw) = r.table::<RawNamespace>("", value) else {
            continue;
        };
        let name = match raw.name {
            Some(s) if valid_namespace(&s) => {
                if !seen.insert(s.clone()) {
                    r.add("name", "another [[namespace]] has this name");
                }
                s
            }
            Some(_) => {
                r.add(
                    "name",
                    "must be a namespace path starting with '/' (\"/\" for the default one)",
                );
                continue;
            }
            None => {
                r.add("name", "missing: the namespace path, e.g. \"/\"");
                continue;
            }
        };
        let connect_event = raw
            .connect_event
            .and_then(|v| parse_connect_event(v, &mut r));
        if r.count() == before {
            out.push(Namespace {
                name,
                connect_event,
            });
        }
    }
    out
}

/// An event name the bridge may send: not reserved, one line.
fn event_name(
    event: Option<String>,
    field: &str,
    default: Option<&str>,
    r: &mut Report<'_>,
) -> Option<Arc<str>> {
    match event {
        Some(s) if RESERVED_EVENTS.contains(&s.as_str()) => {
            r.add(field, format!("`{s}` is reserved"));
            None
        }
        Some(s) if s.chars().any(char::is_control) => {
            r.add(field, "must not contain line breaks or control characters");
            None
        }
        Some(s) if !s.is_empty() => Some(s.into()),
        None if default.is_some() => default.map(Arc::from),
        _ => {
            r.add(field, "missing: the event name to send");
            None
        }
    }
}

/// `connect_event = { event = "...", payload = <connect template> }`; without a payload
/// the event carries an empty object.
fn parse_connect_event(value: toml::Value, r: &mut Report<'_>) -> Option<ConnectEvent> {
    let raw: RawEventRule = r.table("connect_event", value)?;
    let event = event_name(raw.event, "connect_event.event", None, r);
    let payload = match raw.payload {
        None => Template::compile_connect(&Value::Object(serde_json::Map::new())).ok(),
        Some(v) => match Template::compile_connect(&to_json(&v)) {
            Ok(t) => Some(t),
            Err(e) => {
                r.add(
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

/// `emit = { <neutral type> = { event = "...", payload = <template> } }`. On Socket.IO
/// `event` is required; over HTTP it defaults to the neutral name.
fn parse_emit_map(
    table: Option<toml::Table>,
    unmapped: bool,
    side: &str,
    event_required: bool,
    r: &mut Report<'_>,
) -> Option<EmitMap> {
    let Some(table) = table else {
        return Some(EmitMap {
            unmapped,
            ..EmitMap::default()
        });
    };
    let mut map = EmitMap {
        present: true,
        unmapped,
        ..EmitMap::default()
    };
    let before = r.count();
    for (key, value) in table {
        let field = format!("{side}.emit.{key}");
        let Some(kind) = EventKind::parse(&key) else {
            r.add(
                field,
                format!(
                    "`{key}` is not a neutral event type (expected {})",
                    choices(EventKind::ALL.map(EventKind::as_str))
                ),
            );
            continue;
        };
        let Some(raw) = r.table::<RawEventRule>(&field, value) else {
            continue;
        };
        let default = (!event_required).then(|| kind.as_str());
        let event = event_name(raw.event, &format!("{field}.event"), default, r);
        let payload = match raw.payload {
            None => {
                r.add(format!("{field}.payload"), "missing: the payload template");
                None
            }
            Some(v) => match Template::compile_emit(&to_json(&v)) {
                Ok(t) => Some(t),
                Err(e) => {
                    r.add(
                        format!("{field}.payload.{}", e.location).trim_end_matches('.'),
                        e.message,
                    );
                    None
                }
            },
        };
        if let (Some(event), Some(payload)) = (event, payload) {
            map.rules[kind.index()] = Some(EmitRule { event, payload });
        }
    }
    (r.count() == before).then_some(map)
}

fn check_unique(routes: &[Arc<Route>], list: &mut Vec<Problem>) {
    let mut names = HashSet::new();
    let mut paths: HashMap<&str, &str> = HashMap::new();
    let mut events: HashMap<(&str, &str), &str> = HashMap::new();
    for route in routes {
        let mut r = Report {
            list: &mut *list,
            scope: Some(Scope::Route(route.name.to_string())),
        };
        if !names.insert(&*route.name) {
            r.add("name", "duplicate route name");
        }
        if let Some(other) = paths.insert(&route.http.path, &route.name) {
            r.add(
                "http",
                format!(
                    "path {} is also the path of route \"{other}\"",
                    route.http.path
                ),
            );
        }
        if let Some(s) = &route.socketio
            && let Some(other) = events.insert((&s.namespace, &s.request_event), &route.name)
        {
            r.add(
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
    use crate::routes::{ConnectContext, Emit, RequestContext, Routes};

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
            all.contains("routes.toml: route \"a\", field `http.default_format`: unknown variant `html`, expected `ndjson` or `sse`"),
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
            "routes.toml: route \"chat\", field `socketio.join_session`: invalid type: string \"yes\", expected a boolean",
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
                err.list
                    .iter()
                    .any(|p| p.scope == Some(Scope::Route(route.into()))
                        && p.field.as_deref().is_some_and(|f| f.starts_with(field))
                        && p.file.as_deref() == Some("routes.toml")),
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
        assert_eq!(err.list.len(), 2, "{err}");
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
