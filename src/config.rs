//! Settings: every knob, its default and its meaning, in one place.
//!
//! Read from `switchyard.toml` (or `--config FILE`), then `SWITCHYARD_*` environment
//! variables, with `__` between nested keys (`SWITCHYARD_LIMITS__MAX_STREAMS=100`).
//! Owns nothing else: no file other than the config file is read here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::problem::{Problem, Problems};

/// The config file read when `--config` is not given and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "switchyard.toml";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on for HTTP and Socket.IO.
    pub listen: SocketAddr,
    /// The routes file (SPEC section 2).
    pub routes_file: PathBuf,
    /// The flags directory, holding `flags.toml` and `audit.jsonl`.
    pub flags_dir: PathBuf,
    /// Seconds without any event after which an HTTP stream gets a heartbeat.
    pub heartbeat_secs: u64,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub replay: ReplayConfig,
    pub shutdown: ShutdownConfig,
    pub engine: EngineConfig,
    pub cors: CorsConfig,
    pub cluster: ClusterConfig,
}

/// Running as one of several nodes sharing Redis (SPEC section 10). Without `redis_url`
/// the bridge is a single node and nothing here applies.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:pass@]host:port[/db]` of Redis 7+ (or Valkey). Unset: single node.
    pub redis_url: Option<String>,
    /// This node's name in the cluster (letters, digits, `-`, `_`, `.`); unset: made up at
    /// start (`node-` and 8 random hex digits).
    pub node_id: Option<String>,
    /// Prefix of every Redis key and channel the bridge uses.
    pub key_prefix: String,
    /// How often a node renews its liveness key (and checks Redis), in ms.
    pub heartbeat_ms: u64,
    /// How long a node's liveness key lives without renewal, in ms: past it, other nodes
    /// take its streams as lost. At least 2 x `heartbeat_ms`.
    pub lease_ms: u64,
    /// How long Redis may be unreachable before the node ends its live streams with
    /// `cluster_unavailable`, answers new requests 503 and fails `/readyz`, in ms.
    pub outage_timeout_ms: u64,
    /// How long a live stream's Redis keys live without a write, in seconds (a finished
    /// stream's keys live `replay.retention_secs`).
    pub live_ttl_secs: u64,
    /// How often a node looks for a flags change made through another node, in ms.
    pub flags_poll_ms: u64,
    /// Most entries the cluster-wide flags audit log keeps (oldest dropped first).
    pub audit_max: u64,
    /// Most events of one stream Redis keeps (older ones trimmed: a resume from before
    /// them on another node gets 410).
    pub log_max_events: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            node_id: None,
            key_prefix: "sy".into(),
            heartbeat_ms: 1000,
            lease_ms: 3000,
            outage_timeout_ms: 10_000,
            live_ttl_secs: 600,
            flags_poll_ms: 500,
            audit_max: 10_000,
            log_max_events: 65_536,
        }
    }
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), String> {
        let Some(url) = &self.redis_url else {
            return Ok(());
        };
        if !(url.starts_with("redis://") || url.starts_with("valkey://")) {
            return Err(format!(
                "cluster.redis_url: {url:?} is not a redis:// URL (TLS is not supported)"
            ));
        }
        if let Some(id) = &self.node_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err(format!(
                "cluster.node_id: {id:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            return Err("cluster.key_prefix must be non-empty, without braces or spaces".into());
        }
        if self.heartbeat_ms < 100 {
            return Err("cluster.heartbeat_ms must be at least 100".into());
        }
        if self.lease_ms < 2 * self.heartbeat_ms {
            return Err(format!(
                "cluster.lease_ms ({}) must be at least 2 x cluster.heartbeat_ms ({})",
                self.lease_ms, self.heartbeat_ms
            ));
        }
        if self.outage_timeout_ms < self.heartbeat_ms {
            return Err("cluster.outage_timeout_ms must be at least cluster.heartbeat_ms".into());
        }
        if self.live_ttl_secs == 0
            || self.flags_poll_ms == 0
            || self.audit_max == 0
            || self.log_max_events == 0
        {
            return Err(
                "cluster.live_ttl_secs, flags_poll_ms, audit_max and log_max_events must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Cross-origin access for browsers (the streaming endpoints and Socket.IO; the admin API
/// is never cross-origin). Same-origin requests and clients that send no `Origin` (every
/// non-browser client) are not affected.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed cross-origin, exactly as browsers send them
    /// (`"https://app.example.com"`), or `"*"` for any. Empty (the default): none.
    pub allowed_origins: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token of the admin API (its actor in the audit log: `admin`). With neither
    /// this nor `tokens`, the admin API answers 403.
    pub token: Option<String>,
    /// More admin tokens, by name: `tokens = { alice = "…", deploy-bot = "…" }`; the name
    /// is the actor recorded in the audit log.
    pub tokens: std::collections::BTreeMap<String, String>,
}

impl AdminConfig {
    /// Every configured (actor name, token) pair; empty tokens are ignored.
    pub fn named_tokens(&self) -> Vec<(&str, &str)> {
        self.token
            .iter()
            .map(|t| ("admin", t.as_str()))
            .chain(self.tokens.iter().map(|(n, t)| (n.as_str(), t.as_str())))
            .filter(|(_, t)| !t.is_empty())
            .collect()
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret; when set, HTTP needs `Authorization: Bearer <jwt>` and Socket.IO
    /// needs handshake `auth: {token}`. Unset: identity from `x-user-id`/`x-tenant-id`
    /// headers or handshake `auth.user_id`/`auth.tenant_id` (development only).
    pub jwt_secret: Option<String>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
}

/// Memory one open connection costs at most, roughly: hyper's read and write buffers
/// (8 KiB each), the connection's task, and for a Socket.IO socket Engine.IO's queue and
/// tasks (an idle socket measures 18 to 25 KiB in `bench/run`'s idle mode).
pub const CONNECTION_COST: u64 = 48 * 1024;

/// The worst case of memory the settings allow, by part (`switchyard check` prints it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorstCase {
    /// One stream: its log (`replay.max_bytes`), its text and its completion (each
    /// `limits.max_output_bytes`).
    pub per_stream: u64,
    /// All live streams: `limits.max_live_bytes`, plus at most one share per stream for the
    /// streams still under their share (so at most twice the budget), and never more than
    /// `limits.max_streams` × `per_stream`.
    pub live: u64,
    /// Finished streams kept for resume (`replay.max_total_bytes`).
    pub retained: u64,
    /// `limits.max_connections` × [`CONNECTION_COST`].
    pub connections: u64,
}

impl WorstCase {
    pub fn total(&self) -> u64 {
        self.live + self.retained + self.connections
    }
}

impl std::fmt::Display for WorstCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(f, "worst-case memory these settings allow (roughly):")?;
        writeln!(
            f,
            "  one stream         {:>10.1} MiB  replay.max_bytes + 2 x limits.max_output_bytes",
            mib(self.per_stream)
        )?;
        writeln!(
            f,
            "  live streams       {:>10.1} MiB  at most 2 x limits.max_live_bytes, and max_streams x one stream",
            mib(self.live)
        )?;
        writeln!(
            f,
            "  finished streams   {:>10.1} MiB  replay.max_total_bytes",
            mib(self.retained)
        )?;
        writeln!(
            f,
            "  connections        {:>10.1} MiB  limits.max_connections x {} KiB",
            mib(self.connections),
            CONNECTION_COST / 1024
        )?;
        write!(f, "  total              {:>10.1} MiB", mib(self.total()))
    }
}

/// True for `scheme://host[:port]` with nothing after it: the form browsers send in
/// `Origin`, and the only form `cors.allowed_origins` takes (besides `"*"`).
pub fn is_origin(s: &str) -> bool {
    origin_authority(s).is_some_and(|a| !a.is_empty() && !a.contains(['/', '?', '#', ' ', '@']))
}

/// The `host[:port]` of an origin, or `None` when it has no scheme.
pub fn origin_authority(origin: &str) -> Option<&str> {
    let (scheme, rest) = origin.split_once("://")?;
    (!scheme.is_empty()).then_some(rest)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted HTTP request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most bytes of an oversized request body (counted from its start) that are read and
    /// thrown away before its 413 is sent, so a client still sending can read the answer
    /// instead of a reset connection. A body declared larger than this, or longer, gets its
    /// 413 at once and the connection is closed under it.
    pub oversize_discard_bytes: u64,
    /// Longest time spent reading and throwing away an oversized body before its 413 is
    /// sent anyway (and the connection closed).
    pub oversize_discard_secs: u64,
    /// Most streams running at once (429 above).
    pub max_streams: usize,
    /// Most streams running at once for one subject (the user, else the tenant; anonymous
    /// requests only count against `max_streams`); 429 above. 0: no per-subject limit.
    pub max_streams_per_subject: usize,
    /// Most connections open at once (HTTP, SSE, WebSockets, polling keep-alives); one
    /// more is answered 429 `over_capacity` and closed. Also the most Socket.IO sockets.
    pub max_connections: usize,
    /// Most connections open at once from one client address; 0: no such limit.
    pub max_connections_per_ip: usize,
    /// Largest accepted request head (request line and headers), in bytes; 431 above.
    pub max_header_bytes: usize,
    /// Seconds a connection may take to send a complete request head, counted from the
    /// moment it opens or finished its previous request: a connection that sends nothing
    /// (or idles on keep-alive) is closed after it.
    pub header_timeout_secs: u64,
    /// How far (bytes of neutral lines) a subscriber may be behind its stream's head and
    /// never be questioned. One further behind whose next event has waited for it
    /// `slow_consumer_secs` is ended with `slow_consumer`.
    pub max_lag_bytes: u64,
    /// Seconds a subscriber may leave its next event unread while it is more than
    /// `max_lag_bytes` behind (or while the stream's log is full and waits for it) before
    /// it is ended with `slow_consumer`; also the longest a producer is held back by one.
    pub slow_consumer_secs: u64,
    /// Most bytes of text (the concatenated chunks, what `completion.output` carries) one
    /// stream may produce; a stream that outgrows it ends with `error {error_type:
    /// "output_too_large"}` + `end {reason: "error"}`, never with a cut-short text.
    pub max_output_bytes: usize,
    /// Memory all live streams together may hold (their logs and their text). Past three
    /// quarters, streams holding more than their share stop growing; at the whole, new
    /// streams are refused with 429 `over_capacity`.
    pub max_live_bytes: u64,
    /// Largest accepted Socket.IO packet, in bytes (as Node socket.io's maxHttpBufferSize).
    pub socketio_max_payload: u64,
    /// Packets queued per socket before the bridge waits for the socket to drain.
    pub socketio_buffer: usize,
    /// Seconds between Engine.IO pings (Node socket.io's pingInterval).
    pub socketio_ping_interval_secs: u64,
    /// Seconds a client has to answer a ping before its connection is closed (Node
    /// socket.io's pingTimeout): how long a vanished client (a polling client that stopped
    /// polling, a half-open connection) keeps its socket.
    pub socketio_ping_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            oversize_discard_bytes: 8 * 1024 * 1024,
            oversize_discard_secs: 10,
            max_streams: 10_000,
            max_streams_per_subject: 100,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            max_header_bytes: 16 * 1024,
            header_timeout_secs: 30,
            max_lag_bytes: 1024 * 1024,
            slow_consumer_secs: 10,
            max_output_bytes: 1024 * 1024,
            max_live_bytes: 1024 * 1024 * 1024,
            socketio_max_payload: 1_000_000,
            socketio_buffer: 128,
            socketio_ping_interval_secs: 25,
            socketio_ping_timeout_secs: 20,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// Seconds a finished stream stays resumable.
    pub retention_secs: u64,
    /// Seconds a finished stream stays resumable when every subscriber was sent its `end`
    /// (none left early): it is then released before `retention_secs`, but never before
    /// 5 s, so a client that lost the last bytes can still resume at once.
    pub delivered_retention_secs: u64,
    /// Bytes of encoded events kept per stream; older events are evicted past it.
    pub max_bytes: usize,
    /// Approximate memory all finished streams together may hold for resume; past it the
    /// oldest are dropped early (a resume of them gets 404), so a high stream rate cannot
    /// grow memory without bound.
    pub max_total_bytes: u64,
    /// Seconds a stream with no subscriber keeps running before it is cancelled.
    pub orphan_grace_secs: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            retention_secs: 60,
            delivered_retention_secs: 5,
            max_bytes: 8 * 1024 * 1024,
            max_total_bytes: 256 * 1024 * 1024,
            orphan_grace_secs: 10,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds running streams get to finish after SIGTERM/Ctrl-C before they are ended
    /// with `shutdown`.
    pub grace_secs: u64,
    /// Seconds subscribers get, once the last stream has ended, to write out its last
    /// events before session followers are closed.
    pub flush_secs: u64,
    /// Seconds Socket.IO clients on long-polling get, after that, to fetch their last
    /// packets before the sockets are closed (closing drops what a poll has not fetched).
    pub poll_flush_secs: u64,
    /// Seconds open connections get, at the very end, to close by themselves before the
    /// process exits anyway.
    pub close_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_secs: 30,
            flush_secs: 5,
            poll_flush_secs: 2,
            close_secs: 5,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Seconds an engine may stay silent before its stream ends with `timeout`.
    pub idle_timeout_secs: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            idle_timeout_secs: 60,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            routes_file: PathBuf::from("routes.toml"),
            flags_dir: PathBuf::from("flags"),
            heartbeat_secs: 15,
            admin: AdminConfig::default(),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            replay: ReplayConfig::default(),
            shutdown: ShutdownConfig::default(),
            engine: EngineConfig::default(),
            cors: CorsConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// What the headings of configuration problems call it.
const WHAT: &str = "the configuration";

impl Config {
    /// The top-level keys, as the settings serialise; environment variables naming
    /// anything else (such as the CLI's `SWITCHYARD_ADMIN_TOKEN`) are not settings and are
    /// left alone.
    fn top_level_keys() -> Vec<String> {
        match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Defaults, then the config file (`path`, or `switchyard.toml` when it exists), then
    /// the environment. Every problem is reported, each naming its key.
    pub fn load(path: Option<&Path>) -> Result<Config, Problems> {
        let (config, list) = Config::read(path)?;
        if list.is_empty() {
            Ok(config)
        } else {
            Err(Problems::new(WHAT, list))
        }
    }

    /// As [`Config::load`], but settings that were read and are out of range come back
    /// beside them rather than instead of them (so `check` still finds the other files);
    /// only settings that cannot be read at all are an error.
    pub fn read(path: Option<&Path>) -> Result<(Config, Vec<Problem>), Problems> {
        let file = match path {
            Some(p) if !p.exists() => {
                return Err(Problems::one(
                    WHAT,
                    Problem::new("the config file does not exist")
                        .in_file(&p.display().to_string()),
                ));
            }
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let shown = file.as_ref().map(|f| f.display().to_string());
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let keys = Config::top_level_keys();
        figment = figment.merge(Env::prefixed("SWITCHYARD_").split("__").filter(move |k| {
            // The key may arrive before or after `__` became `.`.
            let key = k.as_str().replace("__", ".");
            let first = key.split('.').next().unwrap_or_default();
            keys.iter().any(|t| t.eq_ignore_ascii_case(first))
        }));
        let config: Config = figment.extract().map_err(|errors| {
            let list = errors
                .into_iter()
                .map(|e| {
                    let mut p = if e.path.is_empty() {
                        Problem::new(e.kind.to_string())
                    } else {
                        Problem::field(e.path.join("."), e.kind.to_string())
                    };
                    // Which source the value came from: the file, or the environment.
                    p.file = match e.metadata.as_ref().map(|m| m.name.as_ref()) {
                        Some(name) if name.starts_with("TOML") => shown.clone(),
                        Some(name) => Some(name.to_string()),
                        None => shown.clone(),
                    };
                    p
                })
                .collect();
            Problems::new(WHAT, list)
        })?;
        let list = config
            .problems()
            .into_iter()
            .map(|p| match &shown {
                Some(f) => p.in_file(f),
                None => p,
            })
            .collect();
        Ok((config, list))
    }

    /// Every value that is out of its range or contradicts another.
    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let l = &self.limits;
        let at_least = |out: &mut Vec<Problem>, field: &str, value: u64, min: u64| {
            if value < min {
                out.push(Problem::field(field, format!("must be at least {min}")));
            }
        };
        at_least(&mut out, "heartbeat_secs", self.heartbeat_secs, 1);
        at_least(&mut out, "limits.max_streams", l.max_streams as u64, 1);
        at_least(
            &mut out,
            "limits.max_connections",
            l.max_connections as u64,
            1,
        );
        at_least(
            &mut out,
            "limits.max_header_bytes",
            l.max_header_bytes as u64,
            1024,
        );
        at_least(
            &mut out,
            "limits.header_timeout_secs",
            l.header_timeout_secs,
            1,
        );
        for origin in &self.cors.allowed_origins {
            if origin != "*" && !is_origin(origin) {
                out.push(Problem::field(
                    "cors.allowed_origins",
                    format!("{origin:?} is not an origin (scheme://host[:port], no path) or \"*\""),
                ));
            }
        }
        at_least(
            &mut out,
            "limits.socketio_buffer",
            l.socketio_buffer as u64,
            1,
        );
        at_least(
            &mut out,
            "limits.socketio_ping_interval_secs",
            l.socketio_ping_interval_secs,
            1,
        );
        at_least(
            &mut out,
            "limits.socketio_ping_timeout_secs",
            l.socketio_ping_timeout_secs,
            1,
        );
        at_least(
            &mut out,
            "replay.max_bytes",
            self.replay.max_bytes as u64,
            1,
        );
        if (self.replay.max_bytes as u64) < l.max_lag_bytes {
            out.push(Problem::field(
                "replay.max_bytes",
                format!(
                    "{} is below limits.max_lag_bytes ({}): a stream's log could never hold the lag its subscribers are allowed; raise replay.max_bytes or lower limits.max_lag_bytes",
                    self.replay.max_bytes, l.max_lag_bytes
                ),
            ));
        }
        at_least(
            &mut out,
            "replay.delivered_retention_secs",
            self.replay.delivered_retention_secs,
            5,
        );
        at_least(
            &mut out,
            "limits.slow_consumer_secs",
            l.slow_consumer_secs,
            1,
        );
        at_least(
            &mut out,
            "limits.max_output_bytes",
            l.max_output_bytes as u64,
            1,
        );
        if l.max_live_bytes < self.replay.max_bytes as u64 {
            out.push(Problem::field(
                "limits.max_live_bytes",
                format!(
                    "{} is below replay.max_bytes ({}): not even one stream's log would fit",
                    l.max_live_bytes, self.replay.max_bytes
                ),
            ));
        }
        at_least(
            &mut out,
            "engine.idle_timeout_secs",
            self.engine.idle_timeout_secs,
            1,
        );
        if let Err(message) = self.cluster.validate() {
            out.push(Problem::field("cluster", message));
        }
        if self.auth.jwt_secret.as_deref() == Some("") {
            out.push(Problem::field(
                "auth.jwt_secret",
                "must not be empty (leave it unset to turn auth off)",
            ));
        }
        out
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    /// The most memory these settings let the bridge hold, roughly (see [`WorstCase`]).
    pub fn worst_case(&self) -> WorstCase {
        let l = &self.limits;
        let per_stream = self.replay.max_bytes as u64 + 2 * l.max_output_bytes as u64;
        // The budget, plus up to one share for each stream still under its share.
        let live = (2 * l.max_live_bytes).min(l.max_streams as u64 * per_stream);
        WorstCase {
            per_stream,
            live,
            retained: self.replay.max_total_bytes,
            connections: l.max_connections as u64 * CONNECTION_COST,
        }
    }

    /// The flags file `serve` would read: `flags_dir/flags.toml`, or on a first run the
    /// `flags.example.toml` it is created from.
    pub fn flags_file(&self) -> PathBuf {
        crate::flags::store::flags_source(&self.flags_dir)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_match_the_spec() {
        Jail::expect_with(|_| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(c.heartbeat_secs, 15);
            assert_eq!(c.limits.max_body_bytes, 1 << 20);
            assert_eq!(c.limits.oversize_discard_bytes, 8 << 20);
            assert_eq!(c.limits.oversize_discard_secs, 10);
            assert_eq!(c.limits.socketio_max_payload, 1_000_000);
            assert_eq!(c.replay.retention_secs, 60);
            assert_eq!(c.replay.max_bytes, 8 << 20);
            assert_eq!(c.replay.orphan_grace_secs, 10);
            assert_eq!(c.limits.max_lag_bytes, 1 << 20);
            assert_eq!(c.limits.slow_consumer_secs, 10);
            assert_eq!(c.shutdown.grace_secs, 30);
            assert_eq!(
                (
                    c.shutdown.flush_secs,
                    c.shutdown.poll_flush_secs,
                    c.shutdown.close_secs
                ),
                (5, 2, 5)
            );
            Ok(())
        });
    }

    #[test]
    fn file_then_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "switchyard.toml",
                "heartbeat_secs = 5\n[limits]\nmax_streams = 7\n[admin]\ntoken = \"file\"\n",
            )?;
            jail.set_env("SWITCHYARD_LISTEN", "127.0.0.1:9000");
            jail.set_env("SWITCHYARD_LIMITS__MAX_STREAMS", "100");
            jail.set_env("SWITCHYARD_ADMIN__TOKEN", "env");
            jail.set_env("SWITCHYARD_ADMIN_TOKEN", "not a setting");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
            assert_eq!(c.heartbeat_secs, 5);
            assert_eq!(c.limits.max_streams, 100);
            assert_eq!(c.admin.token.as_deref(), Some("env"));
            Ok(())
        });
    }

    #[test]
    fn slow_consumer_settings_that_contradict_each_other_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "a.toml",
                "[replay]\nmax_bytes = 16384\n[limits]\nmax_lag_bytes = 65536\n",
            )?;
            let err = Config::load(Some(Path::new("a.toml"))).unwrap_err();
            assert!(
                err.to_string().contains("replay.max_bytes")
                    && err.to_string().contains("limits.max_lag_bytes"),
                "{err}"
            );
            jail.create_file("b.toml", "[limits]\nslow_consumer_secs = 0\n")?;
            let err = Config::load(Some(Path::new("b.toml"))).unwrap_err();
            assert!(err.to_string().contains("slow_consumer_secs"), "{err}");
            jail.create_file(
                "c.toml",
                "[replay]\nmax_bytes = 16384\n[limits]\nmax_lag_bytes = 4096\nslow_consumer_secs = 2\n",
            )?;
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.limits.slow_consumer_secs, 2);
            Ok(())
        });
    }

    #[test]
    fn the_worst_case_adds_up_the_bounds() {
        let mut c = Config::default();
        c.replay.max_bytes = 1 << 20;
        c.limits.max_output_bytes = 2 << 20;
        c.limits.max_live_bytes = 100 << 20;
        c.replay.max_total_bytes = 10 << 20;
        c.limits.max_connections = 100;
        let w = c.worst_case();
        assert_eq!(w.per_stream, 5 << 20);
        assert_eq!(w.live, 200 << 20, "twice the budget");
        assert_eq!(w.retained, 10 << 20);
        assert_eq!(w.connections, 100 * CONNECTION_COST);
        assert_eq!(w.total(), (210 << 20) + 100 * CONNECTION_COST);
        // Few streams: never more than they can hold.
        c.limits.max_streams = 3;
        assert_eq!(c.worst_case().live, 15 << 20);
        assert!(w.to_string().contains("total"));
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("a.toml", "[limits]\nmax_stream = 7\n")?;
            let err = Config::load(Some(Path::new("a.toml"))).unwrap_err();
            assert!(err.to_string().contains("max_stream"), "{err}");
            jail.create_file("b.toml", "heartbeat_secs = 0\n")?;
            assert!(Config::load(Some(Path::new("b.toml"))).is_err());
            let err = Config::load(Some(Path::new("missing.toml"))).unwrap_err();
            assert!(err.to_string().contains("does not exist"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn cluster_settings_are_checked() {
        let ok = ClusterConfig {
            redis_url: Some("redis://127.0.0.1:6379/".into()),
            node_id: Some("node-a.1".into()),
            ..ClusterConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ClusterConfig::default().validate(), Ok(()), "single node");
        let bad = [
            ClusterConfig {
                redis_url: Some("http://x".into()),
                ..ok.clone()
            },
            ClusterConfig {
                node_id: Some("a b".into()),
                ..ok.clone()
            },
            ClusterConfig {
                lease_ms: 1500,
                ..ok.clone()
            },
            ClusterConfig {
                key_prefix: "{sy}".into(),
                ..ok.clone()
            },
            ClusterConfig {
                heartbeat_ms: 10,
                ..ok.clone()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
