//! The routes file (`routes.toml`, SPEC section 2): each route's HTTP path, engine, and
//! legacy Socket.IO vocabulary, and each Socket.IO namespace's own behaviour (the event it
//! sends on connect), as data.
//!
//! Owns the model ([`Routes`], [`Route`], the per-route mappings [`EmitMap`], request
//! templates from [`template`], per-namespace settings [`Namespace`]) and the paths and
//! event names the bridge keeps for itself ([`paths`], [`RESERVED_EVENTS`]); reading and
//! validating the file is [`parse`]'s. It does not encode anything for a wire: the
//! encoders ask it which rule applies to an event.

pub mod parse;
pub mod template;

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::engine::EngineSpec;
use crate::event::EventKind;
use crate::problem::{Problem, Problems};
pub use parse::valid_route_name;
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

/// The paths the bridge serves itself: the router mounts its endpoints under these, and
/// a route may not take one (one list for both).
pub mod paths {
    pub const HEALTHZ: &str = "/healthz";
    pub const READYZ: &str = "/readyz";
    pub const METRICS: &str = "/metrics";
    pub const SOCKETIO: &str = "/socket.io";
    pub const ADMIN: &str = "/admin";
    pub const FLAGS: &str = "/api/flags";
    pub const STREAMS: &str = "/api/streams";
    pub const SESSIONS: &str = "/api/sessions";
    pub const CANCEL: &str = "/api/ai/cancel";
    /// The ops console (`/console/` and its files).
    pub const CONSOLE: &str = "/console";

    /// Every prefix above: a route's path may be none of them nor lie below one.
    pub const RESERVED: [&str; 10] = [
        HEALTHZ, READYZ, METRICS, SOCKETIO, ADMIN, FLAGS, STREAMS, SESSIONS, CANCEL, CONSOLE,
    ];
}

/// How SSE frames are written for a route (`sse_framing = "named" | "data_only"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
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
/// (`[route.http] default_format = "ndjson" | "sse"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    pub fn load(path: &Path) -> Result<Routes, Problems> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems::one(
                parse::WHAT,
                Problem::new(format!("cannot read the routes file: {e}")).in_file(&file),
            )
        })?;
        Routes::parse(&text, &file)
    }

    /// Validates routes from text; `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<Routes, Problems> {
        parse::parse(text, file)
    }
}
