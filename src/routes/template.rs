//! Route templates: compiling and rendering the JSON templates of `routes.toml`.
//!
//! Owns the template language (literals, `$` path expressions, the `$$` escape), its three
//! kinds of roots (request templates read a request payload, a Socket.IO event's or an HTTP
//! body, and an auth object, the handshake auth or an HTTP request's identity; emit
//! templates read a neutral event and its stream metadata; connect templates read the
//! handshake auth and `$.now`), the rule that the handshake token is never exposed, and the
//! UTC timestamp format behind `$.now` ([`iso8601`]).
//!
//! It must not touch anything else: no I/O, no clock reads (callers pass `now` in, and ask
//! [`Template::uses_now`] whether to format it at all), no knowledge of transports, engines,
//! the hub or the config file. Errors carry a location inside the template only; the caller
//! prefixes file, route and field.
//!
//! Language, in short:
//! - any JSON value is a template; objects and arrays are walked recursively;
//! - a string that is exactly a path expression is replaced by the value it picks:
//!   `"$"`, `"$.a.b"`, `"$.messages[0].content"`, `"$.messages.0.content"`;
//! - a path that finds nothing renders as `null` (rendering never fails);
//! - `"$$..."` renders as the literal string with one `$` removed (`"$$.x"` → `"$.x"`);
//! - every other value is a literal, copied as is.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// The roots an emit template may name, in the order error messages list them.
const EMIT_ROOTS: [&str; 7] = [
    "data",
    "seq",
    "event",
    "request_id",
    "session_id",
    "route",
    "now",
];

/// The roots a connect template may name.
const CONNECT_ROOTS: [&str; 2] = ["auth", "now"];

/// The auth key that request templates can never read.
const TOKEN_KEY: &str = "token";

/// A compiled template: compile once, render many.
///
/// Created by [`Template::compile_request`] or [`Template::compile_emit`]; render it with the
/// matching `render_*` method. (A path of the other kind renders as `null`.)
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    root: Node,
    uses_now: bool,
}

/// A compile error: where in the template (a dotted field path such as
/// `payload.messages[0].content`, or `(root)` for the template itself) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct TemplateError {
    pub location: String,
    pub message: String,
}

/// What a request template reads: the request payload and an auth object (`$.auth`).
#[derive(Clone, Copy, Debug)]
pub struct RequestContext<'a> {
    /// The Socket.IO event payload, or the HTTP request body.
    pub payload: &'a Value,
    /// The handshake auth object (Socket.IO), or the request's identity (HTTP).
    pub auth: &'a Value,
}

/// What a connect template reads: the socket's handshake auth object and the time.
#[derive(Clone, Copy, Debug)]
pub struct ConnectContext<'a> {
    /// The handshake auth object (its token is never rendered).
    pub auth: &'a Value,
    /// An [`iso8601`] timestamp; only read when [`Template::uses_now`] is true.
    pub now: &'a str,
}

/// What an emit template reads: one neutral event plus its stream metadata.
#[derive(Clone, Copy, Debug)]
pub struct EmitContext<'a> {
    /// The neutral event name (`chunk`, `end`, ...).
    pub event: &'a str,
    /// `None` for events outside the sequence (heartbeats); renders as `null`.
    pub seq: Option<u64>,
    /// The event's data object.
    pub data: &'a Value,
    pub request_id: &'a str,
    pub session_id: Option<&'a str>,
    pub route: &'a str,
    /// An [`iso8601`] timestamp; only read when [`Template::uses_now`] is true.
    pub now: &'a str,
}

/// The compiled tree. Subtrees without any path collapse into one `Literal`.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Literal(Value),
    Path(PathExpr),
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
}

/// A path expression, resolved to its root at compile time.
#[derive(Clone, Debug, PartialEq)]
enum PathExpr {
    /// Request: `$` or a path into the payload.
    Payload(Vec<Seg>),
    /// Request: `$.auth` (empty: the auth object minus the token) or `$.auth.x...`.
    Auth(Vec<Seg>),
    /// Emit: `$` alone, the neutral envelope `{event, seq, data}`.
    Envelope,
    /// Emit: `$.data...`.
    Data(Vec<Seg>),
    Seq,
    Event,
    RequestId,
    SessionId,
    Route,
    Now,
}

/// One step of a path.
#[derive(Clone, Debug, PartialEq)]
enum Seg {
    /// `.name`; `index` is set when the name is all digits (`.0`), so it also indexes arrays.
    Key { name: String, index: Option<usize> },
    /// `[n]`: arrays only.
    Index(usize),
}

impl Template {
    /// Compiles a request template (legacy payload → neutral request input).
    ///
    /// `$` is the payload; `$.auth...` reads the handshake auth object (never its token);
    /// every other first segment reads the payload.
    pub fn compile_request(v: &Value) -> Result<Template, TemplateError> {
        Template::compile(v, Kind::Request)
    }

    /// Compiles an emit template (neutral event → legacy/HTTP payload).
    ///
    /// Roots: `data`, `seq`, `event`, `request_id`, `session_id`, `route`, `now`; `$` alone
    /// is the neutral envelope `{"event", "seq", "data"}`.
    pub fn compile_emit(v: &Value) -> Result<Template, TemplateError> {
        Template::compile(v, Kind::Emit)
    }

    /// Compiles a connect template (the payload of an event sent to a socket on connect).
    ///
    /// Roots: `auth` (the handshake auth object, never its token) and `now`.
    pub fn compile_connect(v: &Value) -> Result<Template, TemplateError> {
        Template::compile(v, Kind::Connect)
    }

    /// Renders a connect template. Never fails: missing paths render as `null`.
    pub fn render_connect(&self, ctx: &ConnectContext<'_>) -> Value {
        self.root.render(&Ctx::Connect(ctx))
    }

    /// Renders a request template. Never fails: missing paths render as `null`.
    pub fn render_request(&self, ctx: &RequestContext<'_>) -> Value {
        self.root.render(&Ctx::Request(ctx))
    }

    /// Renders an emit template. Never fails: missing paths render as `null`.
    pub fn render_emit(&self, ctx: &EmitContext<'_>) -> Value {
        self.root.render(&Ctx::Emit(ctx))
    }

    /// Whether the template reads `$.now`, so callers format the clock only when needed.
    pub fn uses_now(&self) -> bool {
        self.uses_now
    }

    fn compile(v: &Value, kind: Kind) -> Result<Template, TemplateError> {
        let mut compiler = Compiler {
            kind,
            location: String::new(),
            uses_now: false,
        };
        let root = compiler.node(v)?;
        Ok(Template {
            root,
            uses_now: compiler.uses_now,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Request,
    Emit,
    Connect,
}

struct Compiler {
    kind: Kind,
    /// The location of the value being compiled; empty at the template root.
    location: String,
    uses_now: bool,
}

impl Compiler {
    fn node(&mut self, v: &Value) -> Result<Node, TemplateError> {
        match v {
            Value::String(s) => self.string(s),
            Value::Object(map) => {
                let mut fields = Vec::with_capacity(map.len());
                for (key, child) in map {
                    let mark = self.location.len();
                    push_key(&mut self.location, key);
                    let node = self.node(child)?;
                    self.location.truncate(mark);
                    fields.push((key.clone(), node));
                }
                if fields.iter().all(|(_, n)| matches!(n, Node::Literal(_))) {
                    let obj = fields
                        .into_iter()
                        .filter_map(|(k, n)| match n {
                            Node::Literal(v) => Some((k, v)),
                            _ => None,
                        })
                        .collect::<Map<String, Value>>();
                    Ok(Node::Literal(Value::Object(obj)))
                } else {
                    Ok(Node::Object(fields))
                }
            }
            Value::Array(items) => {
                let mut nodes = Vec::with_capacity(items.len());
                for (i, child) in items.iter().enumerate() {
                    let mark = self.location.len();
                    let _ = write!(self.location, "[{i}]");
                    let node = self.node(child)?;
                    self.location.truncate(mark);
                    nodes.push(node);
                }
                if nodes.iter().all(|n| matches!(n, Node::Literal(_))) {
                    let arr = nodes
                        .into_iter()
                        .filter_map(|n| match n {
                            Node::Literal(v) => Some(v),
                            _ => None,
                        })
                        .collect();
                    Ok(Node::Literal(Value::Array(arr)))
                } else {
                    Ok(Node::Array(nodes))
                }
            }
            other => Ok(Node::Literal(other.clone())),
        }
    }

    fn string(&mut self, s: &str) -> Result<Node, TemplateError> {
        if let Some(escaped) = s.strip_prefix("$$") {
            return Ok(Node::Literal(Value::String(format!("${escaped}"))));
        }
        if !(s == "$" || s.starts_with("$.") || s.starts_with("$[")) {
            return Ok(Node::Literal(Value::String(s.to_owned())));
        }
        let segs = parse_path(s).map_err(|m| self.error(format!("invalid path `{s}`: {m}")))?;
        let expr = match self.kind {
            Kind::Request => self.request_path(s, segs)?,
            Kind::Emit => self.emit_path(s, segs)?,
            Kind::Connect => self.connect_path(s, segs)?,
        };
        if expr == PathExpr::Now {
            self.uses_now = true;
        }
        Ok(Node::Path(expr))
    }

    fn request_path(&self, s: &str, mut segs: Vec<Seg>) -> Result<PathExpr, TemplateError> {
        if !matches!(segs.first(), Some(Seg::Key { name, .. }) if name == "auth") {
            return Ok(PathExpr::Payload(segs));
        }
        segs.remove(0);
        if matches!(segs.first(), Some(Seg::Key { name, .. }) if name == TOKEN_KEY) {
            return Err(self.error(format!(
                "`{s}`: the handshake token is never exposed to templates"
            )));
        }
        Ok(PathExpr::Auth(segs))
    }

    fn connect_path(&self, s: &str, segs: Vec<Seg>) -> Result<PathExpr, TemplateError> {
        match segs.first() {
            Some(Seg::Key { name, .. }) if name == "auth" => self.request_path(s, segs),
            Some(Seg::Key { name, .. }) if name == "now" && segs.len() == 1 => Ok(PathExpr::Now),
            Some(Seg::Key { name, .. }) if name == "now" => {
                Err(self.error(format!("`{s}`: `$.now` takes no further segments")))
            }
            _ => Err(self.error(format!(
                "`{s}`: a connect payload reads only {}: `$.auth.x` (the handshake auth) or `$.now`",
                CONNECT_ROOTS.join(" and ")
            ))),
        }
    }

    fn emit_path(&self, s: &str, mut segs: Vec<Seg>) -> Result<PathExpr, TemplateError> {
        let root = match segs.first() {
            None => return Ok(PathExpr::Envelope),
            Some(Seg::Key { name, .. }) => name.clone(),
            Some(Seg::Index(_)) => {
                return Err(self.error(format!(
                    "`{s}`: an emit path must start with a root name; allowed roots: {} \
                     (or `$` alone for the event envelope)",
                    EMIT_ROOTS.join(", ")
                )));
            }
        };
        segs.remove(0);
        let scalar = match root.as_str() {
            "data" => return Ok(PathExpr::Data(segs)),
            "seq" => PathExpr::Seq,
            "event" => PathExpr::Event,
            "request_id" => PathExpr::RequestId,
            "session_id" => PathExpr::SessionId,
            "route" => PathExpr::Route,
            "now" => PathExpr::Now,
            _ => {
                return Err(self.error(format!(
                    "`{s}`: unknown root `{root}`; allowed roots: {} \
                     (or `$` alone for the event envelope)",
                    EMIT_ROOTS.join(", ")
                )));
            }
        };
        if segs.is_empty() {
            Ok(scalar)
        } else {
            Err(self.error(format!("`{s}`: `$.{root}` takes no further segments")))
        }
    }

    fn error(&self, message: String) -> TemplateError {
        let location = if self.location.is_empty() {
            "(root)".to_owned()
        } else {
            self.location.clone()
        };
        TemplateError { location, message }
    }
}

/// Appends an object key to a location: `a`, `.b`, or `["odd key"]` when not a plain name.
fn push_key(location: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        if !location.is_empty() {
            location.push('.');
        }
        location.push_str(key);
    } else {
        location.push('[');
        location.push_str(&Value::String(key.to_owned()).to_string());
        location.push(']');
    }
}

/// Parses `$`, `$.a.b`, `$.a[0].b`, `$.a.0.b`, `$[0]` into segments. The caller has checked
/// that `s` starts with `$` followed by nothing, `.` or `[`.
fn parse_path(s: &str) -> Result<Vec<Seg>, String> {
    let mut segs = Vec::new();
    let mut rest = s.get(1..).unwrap_or_default();
    while let Some(c) = rest.chars().next() {
        match c {
            '.' => {
                let body = &rest[1..];
                let end = body.find(['.', '[', ']']).unwrap_or(body.len());
                let name = &body[..end];
                if name.is_empty() {
                    return Err("empty segment".to_owned());
                }
                if body[end..].starts_with(']') {
                    return Err(format!("unexpected `]` after `{name}`"));
                }
                let index = if name.bytes().all(|b| b.is_ascii_digit()) {
                    name.parse().ok()
                } else {
                    None
                };
                segs.push(Seg::Key {
                    name: name.to_owned(),
                    index,
                });
                rest = &body[end..];
            }
            '[' => {
                let body = &rest[1..];
                let Some(end) = body.find(']') else {
                    return Err("unclosed bracket".to_owned());
                };
                let digits = &body[..end];
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("index `[{digits}]` is not a non-negative integer"));
                }
                let index = digits
                    .parse()
                    .map_err(|_| format!("index `[{digits}]` is too large"))?;
                segs.push(Seg::Index(index));
                rest = &body[end + 1..];
            }
            other => return Err(format!("unexpected `{other}`; expected `.` or `[`")),
        }
    }
    Ok(segs)
}

enum Ctx<'c, 'a> {
    Request(&'c RequestContext<'a>),
    Emit(&'c EmitContext<'a>),
    Connect(&'c ConnectContext<'a>),
}

impl Node {
    fn render(&self, ctx: &Ctx<'_, '_>) -> Value {
        match self {
            Node::Literal(v) => v.clone(),
            Node::Path(p) => p.render(ctx),
            Node::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, n)| (k.clone(), n.render(ctx)))
                    .collect(),
            ),
            Node::Array(items) => Value::Array(items.iter().map(|n| n.render(ctx)).collect()),
        }
    }
}

impl PathExpr {
    fn render(&self, ctx: &Ctx<'_, '_>) -> Value {
        match (self, ctx) {
            (PathExpr::Payload(segs), Ctx::Request(c)) => pick(c.payload, segs),
            (PathExpr::Auth(segs), Ctx::Request(RequestContext { auth, .. }))
            | (PathExpr::Auth(segs), Ctx::Connect(ConnectContext { auth, .. })) => {
                render_auth(auth, segs)
            }
            (PathExpr::Envelope, Ctx::Emit(c)) => {
                let mut env = Map::new();
                env.insert("event".to_owned(), Value::from(c.event));
                env.insert("seq".to_owned(), Value::from(c.seq));
                env.insert("data".to_owned(), c.data.clone());
                Value::Object(env)
            }
            (PathExpr::Data(segs), Ctx::Emit(c)) => pick(c.data, segs),
            (PathExpr::Seq, Ctx::Emit(c)) => Value::from(c.seq),
            (PathExpr::Event, Ctx::Emit(c)) => Value::from(c.event),
            (PathExpr::RequestId, Ctx::Emit(c)) => Value::from(c.request_id),
            (PathExpr::SessionId, Ctx::Emit(c)) => Value::from(c.session_id),
            (PathExpr::Route, Ctx::Emit(c)) => Value::from(c.route),
            (PathExpr::Now, Ctx::Emit(c)) => Value::from(c.now),
            (PathExpr::Now, Ctx::Connect(c)) => Value::from(c.now),
            // A path compiled for the other kind of template.
            _ => Value::Null,
        }
    }
}

/// `$.auth` (the object without its token) or `$.auth.x...`.
fn render_auth(auth: &Value, segs: &[Seg]) -> Value {
    match auth {
        Value::Object(map) if segs.is_empty() => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != TOKEN_KEY)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => pick(auth, segs),
    }
}

/// Follows `segs` from `root`; `null` when any step finds nothing.
fn pick(root: &Value, segs: &[Seg]) -> Value {
    let mut cur = root;
    for seg in segs {
        let next = match (seg, cur) {
            (Seg::Key { name, .. }, Value::Object(map)) => map.get(name),
            (Seg::Key { index: Some(i), .. }, Value::Array(arr)) => arr.get(*i),
            (Seg::Index(i), Value::Array(arr)) => arr.get(*i),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return Value::Null,
        }
    }
    cur.clone()
}

/// Formats `t` as an ISO-8601 UTC timestamp with milliseconds: `2026-11-21T12:34:56.789Z`.
///
/// Instants before 1970 are supported; years outside 0..=9999 print with their natural width.
pub fn iso8601(t: SystemTime) -> String {
    let millis: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => {
            let d = e.duration();
            // Round toward negative infinity so sub-millisecond pre-epoch instants stay before.
            let ms = d.as_millis() as i128;
            if d.as_nanos() % 1_000_000 == 0 {
                -ms
            } else {
                -ms - 1
            }
        }
    };
    let days = millis.div_euclid(86_400_000);
    let ms_of_day = millis.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days as i64);
    let secs = ms_of_day / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms_of_day % 1000
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month, day), proleptic
/// Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn req(t: &Value, payload: Value, auth: Value) -> Value {
        Template::compile_request(t)
            .unwrap()
            .render_request(&RequestContext {
                payload: &payload,
                auth: &auth,
            })
    }

    fn emit_ctx(data: &Value) -> EmitContext<'_> {
        EmitContext {
            event: "chunk",
            seq: Some(7),
            data,
            request_id: "req-1",
            session_id: Some("sess-1"),
            route: "chat",
            now: "2026-11-21T12:34:56.789Z",
        }
    }

    fn emit(t: &Value, data: Value) -> Value {
        Template::compile_emit(t)
            .unwrap()
            .render_emit(&emit_ctx(&data))
    }

    fn req_err(t: Value) -> TemplateError {
        Template::compile_request(&t).unwrap_err()
    }

    fn emit_err(t: Value) -> TemplateError {
        Template::compile_emit(&t).unwrap_err()
    }

    #[test]
    fn literals_pass_through() {
        let t = json!({
            "s": "hello $.x", "dollar": "$5", "n": 1.5, "b": true, "z": null,
            "arr": [1, "two", {"three": 3}], "empty": {}, "none": []
        });
        assert_eq!(req(&t, json!({"x": 1}), json!({})), t);
        assert_eq!(emit(&t, json!({})), t);
        for scalar in [json!("plain"), json!(42), json!(null), json!(false)] {
            assert_eq!(emit(&scalar, json!({})), scalar);
        }
    }

    #[test]
    fn all_literal_subtrees_collapse() {
        let t = Template::compile_emit(&json!({"a": {"b": [1, 2]}, "c": "$.seq"})).unwrap();
        let Node::Object(fields) = &t.root else {
            panic!("expected an object node");
        };
        assert!(
            fields
                .iter()
                .any(|(k, n)| k == "a" && *n == Node::Literal(json!({"b": [1, 2]})))
        );
    }

    #[test]
    fn nested_objects_and_arrays() {
        let t = json!({
            "model": "gpt",
            "messages": [{"role": "user", "content": "$.text"}, ["$.n", 2]],
            "meta": {"deep": {"who": "$.user.name"}}
        });
        let out = req(
            &t,
            json!({"text": "hi", "n": 1, "user": {"name": "ada"}}),
            json!({}),
        );
        assert_eq!(
            out,
            json!({
                "model": "gpt",
                "messages": [{"role": "user", "content": "hi"}, [1, 2]],
                "meta": {"deep": {"who": "ada"}}
            })
        );
    }

    #[test]
    fn whole_payload() {
        let payload = json!({"a": [1, {"b": 2}]});
        assert_eq!(req(&json!("$"), payload.clone(), json!({})), payload);
        assert_eq!(
            req(&json!({"input": "$"}), payload.clone(), json!({})),
            json!({"input": payload})
        );
        assert_eq!(req(&json!("$"), json!([1, 2]), json!({})), json!([1, 2]));
    }

    #[test]
    fn both_index_syntaxes() {
        let payload = json!({"messages": [{"content": "a"}, {"content": "b"}], "m": {"0": "key"}});
        for path in ["$.messages[1].content", "$.messages.1.content"] {
            assert_eq!(req(&json!(path), payload.clone(), json!({})), json!("b"));
        }
        // A dotted number on an object is a key; a bracket index on an object finds nothing.
        assert_eq!(
            req(&json!("$.m.0"), payload.clone(), json!({})),
            json!("key")
        );
        assert_eq!(
            req(&json!("$.m[0]"), payload.clone(), json!({})),
            json!(null)
        );
        // Chained brackets and a root index.
        assert_eq!(
            req(&json!("$.g[1][0]"), json!({"g": [[1], [2, 3]]}), json!({})),
            json!(2)
        );
        assert_eq!(
            req(&json!("$[1]"), json!(["x", "y"]), json!({})),
            json!("y")
        );
        assert_eq!(
            emit(&json!("$.data.items[0]"), json!({"items": ["i"]})),
            json!("i")
        );
    }

    #[test]
    fn missing_paths_render_null() {
        let payload = json!({"a": {"b": [1]}, "s": "str"});
        for path in [
            "$.nope",
            "$.a.nope",
            "$.a.b[5]",
            "$.a.b.5",
            "$.s.x",
            "$.s[0]",
            "$.a.b[0].deeper",
        ] {
            assert_eq!(
                req(&json!(path), payload.clone(), json!({})),
                json!(null),
                "{path}"
            );
        }
        assert_eq!(
            req(&json!("$.auth.user"), json!({}), json!(null)),
            json!(null)
        );
        assert_eq!(emit(&json!("$.data.missing.x"), json!({})), json!(null));
        assert_eq!(
            emit(&json!("$.data.x"), json!("not an object")),
            json!(null)
        );
    }

    #[test]
    fn dollar_escape() {
        assert_eq!(emit(&json!("$$.x"), json!({})), json!("$.x"));
        assert_eq!(emit(&json!("$$"), json!({})), json!("$"));
        assert_eq!(emit(&json!("$$$.x"), json!({})), json!("$$.x"));
        // An escaped malformed path is not an error.
        assert_eq!(
            req(&json!({"k": "$$.a..b"}), json!({}), json!({})),
            json!({"k": "$.a..b"})
        );
        assert_eq!(
            req(&json!("$$.auth.token"), json!({}), json!({})),
            json!("$.auth.token")
        );
    }

    #[test]
    fn auth_field_read() {
        let auth = json!({"token": "secret", "user": {"id": 9}, "tenant": "t1"});
        let t = json!({"tenant": "$.auth.tenant", "uid": "$.auth.user.id", "p": "$.auth_x"});
        assert_eq!(
            req(&t, json!({"auth_x": "payload"}), auth),
            json!({"tenant": "t1", "uid": 9, "p": "payload"})
        );
        // `auth` in the payload is never what `$.auth` reads.
        assert_eq!(
            req(
                &json!("$.auth.k"),
                json!({"auth": {"k": "p"}}),
                json!({"k": "a"})
            ),
            json!("a")
        );
    }

    #[test]
    fn auth_whole_renders_without_token() {
        let auth = json!({"token": "secret", "tenant": "t1"});
        let out = req(&json!({"a": "$.auth"}), json!({}), auth);
        assert_eq!(out, json!({"a": {"tenant": "t1"}}));
        assert!(!out.to_string().contains("secret"));
        assert_eq!(req(&json!("$.auth"), json!({}), json!(null)), json!(null));
    }

    #[test]
    fn auth_token_refused_at_compile() {
        for path in ["$.auth.token", "$.auth.token.inner", "$.auth.token[0]"] {
            let e = req_err(json!({"headers": {"authorization": path}}));
            assert_eq!(e.location, "headers.authorization");
            assert!(
                e.message
                    .contains("the handshake token is never exposed to templates"),
                "{}",
                e.message
            );
        }
        // A payload field named token is fine, and so is an escaped path.
        assert_eq!(
            req(&json!("$.token"), json!({"token": 1}), json!({})),
            json!(1)
        );
    }

    #[test]
    fn every_emit_root() {
        let data = json!({"text": "hi", "n": [1, 2]});
        let t = json!({
            "data": "$.data", "text": "$.data.text", "n1": "$.data.n[1]",
            "seq": "$.seq", "event": "$.event", "request_id": "$.request_id",
            "session_id": "$.session_id", "route": "$.route", "now": "$.now"
        });
        assert_eq!(
            emit(&t, data.clone()),
            json!({
                "data": data, "text": "hi", "n1": 2,
                "seq": 7, "event": "chunk", "request_id": "req-1",
                "session_id": "sess-1", "route": "chat", "now": "2026-11-21T12:34:56.789Z"
            })
        );
        let heartbeat = EmitContext {
            event: "heartbeat",
            seq: None,
            session_id: None,
            ..emit_ctx(&data)
        };
        let out = Template::compile_emit(&json!(["$.seq", "$.session_id"]))
            .unwrap()
            .render_emit(&heartbeat);
        assert_eq!(out, json!([null, null]));
    }

    #[test]
    fn whole_envelope() {
        let data = json!({"text": "hi"});
        assert_eq!(
            emit(&json!("$"), data.clone()),
            json!({"event": "chunk", "seq": 7, "data": {"text": "hi"}})
        );
        let hb = EmitContext {
            event: "heartbeat",
            seq: None,
            ..emit_ctx(&data)
        };
        assert_eq!(
            Template::compile_emit(&json!({"e": "$"}))
                .unwrap()
                .render_emit(&hb),
            json!({"e": {"event": "heartbeat", "seq": null, "data": {"text": "hi"}}})
        );
    }

    #[test]
    fn uses_now_tracks_the_now_root() {
        assert!(
            Template::compile_emit(&json!({"a": [{"t": "$.now"}]}))
                .unwrap()
                .uses_now()
        );
        assert!(
            !Template::compile_emit(&json!({"a": "$.seq", "b": "$$.now", "c": "now"}))
                .unwrap()
                .uses_now()
        );
        // In a request template `now` is just a payload field.
        assert!(
            !Template::compile_request(&json!("$.now"))
                .unwrap()
                .uses_now()
        );
    }

    #[test]
    fn connect_templates_read_the_auth_and_the_time() {
        let t = Template::compile_connect(&json!({
            "message": "Connected to the chat server", "timestamp": "$.now",
            "user": "$.auth.user_id", "all": "$.auth", "lit": "$$.x"
        }))
        .unwrap();
        assert!(t.uses_now());
        let auth = json!({"user_id": "dana", "token": "secret"});
        let out = t.render_connect(&ConnectContext {
            auth: &auth,
            now: "2026-11-21T12:34:56.789Z",
        });
        assert_eq!(
            out,
            json!({"message": "Connected to the chat server", "timestamp": "2026-11-21T12:34:56.789Z",
                   "user": "dana", "all": {"user_id": "dana"}, "lit": "$.x"})
        );
        for (bad, want) in [
            ("$.auth.token", "the handshake token is never exposed"),
            ("$.message", "reads only auth and now"),
            ("$", "reads only auth and now"),
            ("$.now.x", "takes no further segments"),
            ("$.data.text", "reads only auth and now"),
        ] {
            let e = Template::compile_connect(&json!({"f": bad})).unwrap_err();
            assert_eq!(e.location, "f");
            assert!(e.message.contains(want), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn mismatched_render_is_null_not_panic() {
        let t = Template::compile_request(&json!({"x": "$.a"})).unwrap();
        let data = json!({"a": 1});
        assert_eq!(t.render_emit(&emit_ctx(&data)), json!({"x": null}));
    }

    #[test]
    fn malformed_paths_are_errors_with_location() {
        let cases = [
            ("$.a..b", "empty segment"),
            ("$.", "empty segment"),
            ("$.a.", "empty segment"),
            ("$.[0]", "empty segment"),
            ("$.a[0", "unclosed bracket"),
            ("$.a[x]", "not a non-negative integer"),
            ("$.a[]", "not a non-negative integer"),
            ("$.a[-1]", "not a non-negative integer"),
            ("$.a[99999999999999999999999]", "too large"),
            ("$.a]", "unexpected `]`"),
            ("$.a[0]b", "unexpected `b`"),
        ];
        for (path, want) in cases {
            let t = json!({"payload": {"messages": [{"role": "user", "content": path}]}});
            let e = req_err(t.clone());
            assert_eq!(e.location, "payload.messages[0].content", "{path}");
            assert!(e.message.contains(want), "{path}: {}", e.message);
            assert!(e.message.contains(path), "{path}: {}", e.message);
            let e = emit_err(t);
            assert_eq!(e.location, "payload.messages[0].content", "{path}");
            assert!(e.message.contains(want), "{path}: {}", e.message);
        }
    }

    #[test]
    fn error_locations() {
        assert_eq!(req_err(json!("$.a..b")).location, "(root)");
        assert_eq!(req_err(json!(["ok", ["$.x", "$.a..b"]])).location, "[1][1]");
        assert_eq!(
            req_err(json!({"odd key": {"a.b": "$.a..b"}})).location,
            r#"["odd key"]["a.b"]"#
        );
        let e = emit_err(json!({"body": {"at": "$.now.x"}}));
        assert_eq!(e.location, "body.at");
        assert_eq!(
            e.to_string(),
            "body.at: `$.now.x`: `$.now` takes no further segments"
        );
    }

    #[test]
    fn scalar_emit_roots_take_no_segments() {
        for root in ["seq", "event", "request_id", "session_id", "route", "now"] {
            for suffix in [".x", "[0]"] {
                let path = format!("$.{root}{suffix}");
                let e = emit_err(json!({"f": path}));
                assert_eq!(e.location, "f");
                assert!(
                    e.message.contains("takes no further segments"),
                    "{}",
                    e.message
                );
            }
        }
    }

    #[test]
    fn unknown_emit_root() {
        let e = emit_err(json!({"out": {"v": "$.payload.x"}}));
        assert_eq!(e.location, "out.v");
        assert!(
            e.message.contains("unknown root `payload`"),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains("data, seq, event, request_id, session_id, route, now"),
            "{}",
            e.message
        );
        let e = emit_err(json!("$[0]"));
        assert!(
            e.message.contains("must start with a root name"),
            "{}",
            e.message
        );
        // `auth` is a request-only root.
        assert!(
            emit_err(json!("$.auth"))
                .message
                .contains("unknown root `auth`")
        );
    }

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn iso8601_vectors() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(at(1, 1)), "1970-01-01T00:00:01.001Z");
        // Leap day 2024-02-29 and the days around it.
        assert_eq!(iso8601(at(1_709_164_800, 0)), "2024-02-29T00:00:00.000Z");
        assert_eq!(iso8601(at(1_709_251_199, 999)), "2024-02-29T23:59:59.999Z");
        assert_eq!(iso8601(at(1_709_251_200, 0)), "2024-03-01T00:00:00.000Z");
        assert_eq!(iso8601(at(1_709_078_400, 0)), "2024-02-28T00:00:00.000Z");
        // 2000 was a leap year (divisible by 400).
        assert_eq!(iso8601(at(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(at(978_307_199, 0)), "2000-12-31T23:59:59.000Z");
        // 2038 and beyond.
        assert_eq!(iso8601(at(2_147_483_647, 0)), "2038-01-19T03:14:07.000Z");
        assert_eq!(iso8601(at(2_147_483_648, 500)), "2038-01-19T03:14:08.500Z");
        assert_eq!(iso8601(at(4_102_444_800, 0)), "2100-01-01T00:00:00.000Z");
        // 2100 is not a leap year: Feb 28 is followed by Mar 1.
        assert_eq!(iso8601(at(4_107_456_000, 0)), "2100-02-28T00:00:00.000Z");
        assert_eq!(iso8601(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000Z");
        assert_eq!(
            iso8601(at(253_402_300_799, 999)),
            "9999-12-31T23:59:59.999Z"
        );
        // The brief's example instant, and sub-millisecond truncation.
        assert_eq!(iso8601(at(1_795_264_496, 789)), "2026-11-21T12:34:56.789Z");
        assert_eq!(
            iso8601(at(1_795_264_496, 789) + Duration::from_micros(999)),
            "2026-11-21T12:34:56.789Z"
        );
    }

    #[test]
    fn iso8601_before_epoch() {
        assert_eq!(
            iso8601(UNIX_EPOCH - Duration::from_millis(1)),
            "1969-12-31T23:59:59.999Z"
        );
        assert_eq!(
            iso8601(UNIX_EPOCH - Duration::from_micros(1)),
            "1969-12-31T23:59:59.999Z"
        );
        assert_eq!(
            iso8601(UNIX_EPOCH - Duration::from_secs(86_400 * 365)),
            "1969-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn civil_from_days_round_trips_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    }
}
