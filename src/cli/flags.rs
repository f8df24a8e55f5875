//! The ops command line for per-route transport flags: `switchyard flags list|set|rollback|history`.
//!
//! Owns: the HTTP calls to the bridge's admin API (SPEC §5 and §9 "Flags and admin API"),
//! the cheap local checks done before anything is sent, the mapping of every failure to one
//! actionable line ([`ClientError`]), and the human (tables) and `--json` rendering of the
//! answers. [`run`] returns the text to print, so every command is testable without a terminal.
//!
//! Must not: read or write server state or files (`flags/flags.toml`, `flags/audit.jsonl`).
//! It speaks to a running bridge over HTTP only, and it never prints the token. Its local
//! checks are the server's own rules ([`Mode`], [`Sticky`], [`Percent`], [`SubjectRef`],
//! route names), so an input the CLI refuses is one the bridge would refuse.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard::admin::{AuditPage, FlagsListing};
use switchyard::flags::store::Changed;
use switchyard::flags::{Mode, Percent, RouteFlag, Sticky, SubjectRef};
use switchyard::problem::choices;

/// Where the bridge listens unless `--url` / `SWITCHYARD_URL` says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The whole exchange (connect, send, read the answer) must finish within this.
const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the admin API and how to print its answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// Base URL of the bridge, e.g. `http://127.0.0.1:8080` (a path prefix is kept).
    pub url: String,
    /// The admin bearer token (`SWITCHYARD_ADMIN_TOKEN`); required by every command.
    pub token: Option<String>,
    /// Sent as `x-actor` and recorded in the audit log.
    pub actor: Option<String>,
    /// Print the raw JSON answer (pretty) instead of the human rendering.
    pub json: bool,
}

/// One `switchyard flags` command. Values stay as typed so that every check, and its
/// message, lives here rather than in the argument parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagsCommand {
    /// `GET /admin/flags`.
    List,
    /// `PUT /admin/flags/{route}` with a whole table.
    Set(SetArgs),
    /// `POST /admin/flags/{route}/rollback`.
    Rollback { route: String },
    /// `GET /admin/audit?limit=N`.
    History { limit: Option<String> },
}

/// The arguments of `switchyard flags set` (also its command-line definition; values
/// stay strings so a bad one gets this module's one-line reason, not clap's usage error).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct SetArgs {
    /// Route name, as in routes.toml.
    pub route: String,
    /// legacy | dual | rollout | new
    #[arg(long)]
    pub mode: String,
    /// rollout: share of subjects sent to HTTP, 0 to 100, at most two decimals [default: 0]
    #[arg(long)]
    pub percent: Option<String>,
    /// user | session | tenant [default: user]
    #[arg(long)]
    pub sticky: Option<String>,
    /// Always HTTP for this subject (repeatable), e.g. user:alice
    #[arg(long, value_name = "KIND:VALUE")]
    pub allow: Vec<String>,
    /// Always Socket.IO for this subject (repeatable), e.g. tenant:acme
    #[arg(long, value_name = "KIND:VALUE")]
    pub deny: Vec<String>,
    /// Refuse requests on the transport their subject was not given
    #[arg(long)]
    pub strict: bool,
    /// Only apply if the flags are still at this version (409 otherwise)
    #[arg(long, value_name = "VERSION")]
    pub if_match: Option<String>,
}

/// Everything that can go wrong; `Display` is the one line printed after `error: `, saying
/// what went wrong and what to do. No variant has a source, so `{:#}` prints the same line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A local check failed; nothing was sent.
    #[error("{0}")]
    Invalid(String),
    #[error("no admin token: set SWITCHYARD_ADMIN_TOKEN (or pass --token)")]
    MissingToken,
    /// The request never got an HTTP answer.
    #[error("cannot reach the bridge at {url}: {reason} (is it running? set --url)")]
    Unreachable { url: String, reason: String },
    /// 401 or 403.
    #[error("the admin API refused the token ({status}): check SWITCHYARD_ADMIN_TOKEN{detail}")]
    Refused { status: u16, detail: String },
    /// 409 on a `set` sent with `--if-match`.
    #[error(
        "version conflict (409): flags changed since version {expected}; run 'switchyard flags list' and retry"
    )]
    Conflict { expected: u64 },
    /// Any other non-2xx answer, with the server's own message.
    #[error("{what} ({status}): {message}")]
    Api {
        status: u16,
        what: String,
        message: String,
    },
    /// A 2xx answer that is not what the admin API sends.
    #[error("unexpected answer from {url}: {reason} (is --url pointing at a switchyard bridge?)")]
    BadResponse { url: String, reason: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
}

/// Runs one command against the admin API and returns the text to print (no trailing newline).
pub async fn run(opts: &ClientOptions, cmd: &FlagsCommand) -> Result<String, ClientError> {
    let call = plan(cmd)?;
    let api = Api::new(opts)?;
    let answer = api.send(&call).await?;
    render(opts.json, cmd, &answer, &api.base)
}

/// [`run`] on a fresh current-thread runtime, for a synchronous `main`.
pub fn run_blocking(opts: &ClientOptions, cmd: &FlagsCommand) -> Result<String, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Runtime(e.to_string()))?;
    runtime.block_on(run(opts, cmd))
}

/// The HTTP method of a [`Call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
}

/// One admin API request, fully checked, before any network I/O.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: Method,
    /// Path and query below the base URL, e.g. `/admin/flags/chat`.
    pub path: String,
    pub body: Option<Value>,
    pub if_match: Option<u64>,
}

/// Checks a command's arguments and turns it into the request to send.
pub fn plan(cmd: &FlagsCommand) -> Result<Call, ClientError> {
    Ok(match cmd {
        FlagsCommand::List => Call {
            method: Method::Get,
            path: "/admin/flags".to_owned(),
            body: None,
            if_match: None,
        },
        FlagsCommand::Set(args) => {
            check_route(&args.route)?;
            let if_match = match &args.if_match {
                None => None,
                Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                    invalid(format!(
                        "invalid --if-match '{v}': expected a flags version number (see 'switchyard flags list')"
                    ))
                })?),
            };
            Call {
                method: Method::Put,
                path: format!("/admin/flags/{}", args.route),
                body: Some(build_table(args)?),
                if_match,
            }
        }
        FlagsCommand::Rollback { route } => {
            check_route(route)?;
            Call {
                method: Method::Post,
                path: format!("/admin/flags/{route}/rollback"),
                body: None,
                if_match: None,
            }
        }
        FlagsCommand::History { limit } => {
            let path = match limit {
                None => "/admin/audit".to_owned(),
                Some(l) => match l.trim().parse::<u32>() {
                    Ok(n) if n >= 1 => format!("/admin/audit?limit={n}"),
                    _ => {
                        return Err(invalid(format!(
                            "invalid --limit '{l}': expected a whole number of entries, at least 1"
                        )));
                    }
                },
            };
            Call {
                method: Method::Get,
                path,
                body: None,
                if_match: None,
            }
        }
    })
}

/// Builds the whole route table a `set` sends, with every field explicit.
pub fn build_table(args: &SetArgs) -> Result<Value, ClientError> {
    let Some(mode) = Mode::parse(args.mode.trim()) else {
        return Err(invalid(format!(
            "invalid --mode '{}': expected {}",
            args.mode,
            choices(Mode::ALL.map(Mode::as_str))
        )));
    };
    let basis_points = match &args.percent {
        None => 0,
        Some(p) => parse_percent(p).ok_or_else(|| {
            invalid(format!(
                "invalid --percent '{p}': expected a number from 0 to 100 with at most two decimals (e.g. 25 or 12.5)"
            ))
        })?,
    };
    let sticky = match &args.sticky {
        None => Sticky::default(),
        Some(s) => Sticky::parse(s.trim()).ok_or_else(|| {
            invalid(format!(
                "invalid --sticky '{s}': expected {}",
                choices(Sticky::ALL.map(Sticky::as_str))
            ))
        })?,
    };
    let allow = check_entries("--allow", &args.allow)?;
    let deny = check_entries("--deny", &args.deny)?;
    if let Some(both) = allow.iter().find(|a| deny.contains(a)) {
        return Err(invalid(format!(
            "'{both}' is in both --allow and --deny (deny would win): keep only one"
        )));
    }
    Ok(json!({
        "mode": mode.as_str(),
        "percent": f64::from(basis_points) / 100.0,
        "sticky": sticky.as_str(),
        "allow": allow,
        "deny": deny,
        "strict": args.strict,
    }))
}

/// Parses a percentage into basis points (`25.37` → 2537) by the bridge's own rule
/// ([`Percent`]: at most two decimals, `0..=100`, converted exactly); `None` when it
/// refuses it. A trailing `%` is accepted.
pub fn parse_percent(text: &str) -> Option<u32> {
    let t = text.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim_end();
    t.parse::<Percent>()
        .ok()
        .map(|p| u32::from(p.basis_points()))
}

/// Route names as routes.toml allows them (the routes file's own rule).
fn check_route(route: &str) -> Result<(), ClientError> {
    if switchyard::routes::valid_route_name(route) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid route name '{route}': 1 to 64 characters of a-z, 0-9, '_' or '-', starting with a letter"
        )))
    }
}

/// Checks `kind:value` entries; returns them trimmed, duplicates dropped, order kept.
fn check_entries(option: &str, entries: &[String]) -> Result<Vec<String>, ClientError> {
    let mut out: Vec<String> = Vec::new();
    for raw in entries {
        let entry = raw.trim();
        let ok = entry
            .parse::<SubjectRef>()
            .is_ok_and(|r| !r.value.trim().is_empty());
        if !ok {
            return Err(invalid(format!(
                "invalid {option} '{raw}': expected kind:value with kind {} (e.g. user:alice)",
                choices(Sticky::ALL.map(Sticky::as_str))
            )));
        }
        if !out.iter().any(|e| e == entry) {
            out.push(entry.to_owned());
        }
    }
    Ok(out)
}

fn invalid(message: String) -> ClientError {
    ClientError::Invalid(message)
}

/// A checked connection setting: base URL, token and actor.
struct Api {
    /// The base URL as given, without a trailing `/` (used in messages and to build URLs).
    base: String,
    token: String,
    actor: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn new(opts: &ClientOptions) -> Result<Self, ClientError> {
        let base = check_url(&opts.url)?;
        let token = opts
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ClientError::MissingToken)?;
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "the admin token has characters a header cannot carry (spaces, non-ASCII): check SWITCHYARD_ADMIN_TOKEN".to_owned(),
            ));
        }
        let actor = match opts.actor.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) if a.len() <= 200 && a.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) => {
                Some(a.to_owned())
            }
            Some(a) => {
                return Err(invalid(format!(
                    "invalid --actor '{a}': use at most 200 printable ASCII characters"
                )));
            }
        };
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("switchyard-flags/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Runtime(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self {
            base,
            token: token.to_owned(),
            actor,
            http,
        })
    }

    /// Sends the call; a 2xx answer must be JSON and is returned as is.
    async fn send(&self, call: &Call) -> Result<Value, ClientError> {
        let url = format!("{}{}", self.base, call.path);
        let mut req = match call.method {
            Method::Get => self.http.get(&url),
            Method::Put => self.http.put(&url),
            Method::Post => self.http.post(&url),
        }
        .bearer_auth(&self.token)
        .header("accept", "application/json");
        if let Some(actor) = &self.actor {
            req = req.header("x-actor", actor.as_str());
        }
        if let Some(v) = call.if_match {
            req = req.header("if-match", v.to_string());
        }
        if let Some(body) = &call.body {
            req = req.json(body);
        }
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: self.base.clone(),
            reason: reach_reason(&e),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(unreachable)?;
        if !(200..300).contains(&status) {
            return Err(status_error(status, &text, call, &self.base));
        }
        serde_json::from_str(&text).map_err(|_| ClientError::BadResponse {
            url: self.base.clone(),
            reason: format!(
                "{} answered {status} with a body that is not JSON",
                call.path
            ),
        })
    }
}

/// Checks `--url` and returns it without a trailing `/`.
fn check_url(url: &str) -> Result<String, ClientError> {
    let trimmed = url.trim().trim_end_matches('/');
    let bad = |why: &str| {
        invalid(format!(
            "invalid --url '{url}': {why} (e.g. {DEFAULT_URL}; or set SWITCHYARD_URL)"
        ))
    };
    let parsed = reqwest::Url::parse(trimmed).map_err(|_| bad("not a URL"))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(bad(
                "https is not supported by this build; use the bridge's plain http:// address",
            ));
        }
        _ => return Err(bad("expected an http:// address")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("no query or fragment allowed"));
    }
    Ok(trimmed.to_owned())
}

/// Why a request got no HTTP answer, in a few words (`connection refused`).
fn reach_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", TIMEOUT.as_secs());
    }
    let mut deepest = e.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::ConnectionRefused => "connection refused".to_owned(),
                K::ConnectionReset => "connection reset".to_owned(),
                K::ConnectionAborted => "connection aborted".to_owned(),
                K::TimedOut => "connection timed out".to_owned(),
                _ => one_line(&strip_os_error(&io.to_string())),
            };
        }
        deepest = s.to_string();
        source = s.source();
    }
    one_line(&strip_os_error(&deepest))
}

fn strip_os_error(s: &str) -> String {
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s.to_owned(),
    }
}

/// Maps a non-2xx answer to its one-line error.
pub fn status_error(status: u16, body: &str, call: &Call, base: &str) -> ClientError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let server_message = error
        .and_then(|e| {
            e.get("message")
                .and_then(Value::as_str)
                .or_else(|| e.as_str())
                .or_else(|| e.get("error_type").and_then(Value::as_str))
        })
        .map(one_line)
        .filter(|m| !m.is_empty());
    if let (409, Some(expected)) = (status, call.if_match) {
        return ClientError::Conflict { expected };
    }
    match status {
        401 | 403 => ClientError::Refused {
            status,
            detail: match (status, server_message) {
                (_, Some(m)) => format!(" (the bridge says: {m})"),
                (403, None) => " (a bridge without admin.token refuses every token)".to_owned(),
                _ => String::new(),
            },
        },
        404 if server_message.is_none() => ClientError::Api {
            status,
            what: "not found".to_owned(),
            message: format!(
                "{base} has no {} (is --url pointing at a switchyard bridge with the admin API?)",
                call.path
            ),
        },
        _ => {
            let what = match status {
                400 => "the bridge refused the request",
                404 => "not found",
                409 => "conflict",
                500..=599 => "the bridge failed",
                _ => "the bridge answered",
            };
            let message = server_message.unwrap_or_else(|| {
                let text = one_line(body);
                if text.is_empty() {
                    "no details given".to_owned()
                } else {
                    text
                }
            });
            ClientError::Api {
                status,
                what: what.to_owned(),
                message,
            }
        }
    }
}

/// Collapses whitespace (newlines included) and caps the length, so a message stays one line.
fn one_line(s: &str) -> String {
    const MAX: usize = 300;
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= MAX {
        joined
    } else {
        let mut cut: String = joined.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

/// Renders a 2xx answer for `cmd`: raw pretty JSON, or the human form.
fn render(
    json: bool,
    cmd: &FlagsCommand,
    answer: &Value,
    base: &str,
) -> Result<String, ClientError> {
    // The answers are read as the admin API's own types: a bridge that answers something
    // else is reported, never half-rendered.
    fn read<T: serde::de::DeserializeOwned>(answer: &Value, base: &str) -> Result<T, ClientError> {
        T::deserialize(answer).map_err(|e| ClientError::BadResponse {
            url: base.to_owned(),
            reason: format!("the answer is not the admin API's: {e}"),
        })
    }
    let text = match cmd {
        FlagsCommand::List => render_list(&read(answer, base)?),
        FlagsCommand::Set(args) => render_set(&args.route, &read(answer, base)?),
        FlagsCommand::Rollback { route } => render_rollback(route, &read(answer, base)?),
        FlagsCommand::History { .. } => render_history(&read(answer, base)?),
    };
    if json {
        return Ok(serde_json::to_string_pretty(answer).unwrap_or_else(|_| answer.to_string()));
    }
    Ok(text)
}

/// `GET /admin/flags` as a table, routes sorted by name, then the version and reload line.
pub fn render_list(answer: &FlagsListing) -> String {
    let mut out = if answer.routes.is_empty() {
        "no route has a flag table (every route is legacy)".to_owned()
    } else {
        let rows: Vec<Vec<String>> = answer
            .routes
            .iter()
            .map(|(name, flag)| {
                vec![
                    name.clone(),
                    flag.mode.as_str().to_owned(),
                    if flag.mode == Mode::Rollout {
                        format!("{}%", percent_text(flag.percent))
                    } else {
                        "-".to_owned()
                    },
                    flag.sticky.as_str().to_owned(),
                    if flag.strict { "yes" } else { "no" }.to_owned(),
                    list_cell(&entries(&flag.allow)),
                    list_cell(&entries(&flag.deny)),
                ]
            })
            .collect();
        table(
            &[
                "ROUTE", "MODE", "PERCENT", "STICKY", "STRICT", "ALLOW", "DENY",
            ],
            &rows,
        )
    };
    out.push('\n');
    out.push_str(&format!("flags version {}", answer.version));
    let reload = &answer.reload;
    let at = if reload.at.is_empty() {
        String::new()
    } else {
        format!(" at {}", reload.at)
    };
    if reload.ok {
        out.push_str(&format!(" · last reload ok{at}"));
    } else {
        let error = reload
            .error
            .as_deref()
            .map(one_line)
            .unwrap_or_else(|| "no details".to_owned());
        out.push_str(&format!(
            " · last reload FAILED{at}: {error} (the last good flags are still served)"
        ));
    }
    out
}

/// `GET /admin/audit` as a table, in the order given (newest first).
pub fn render_history(answer: &AuditPage) -> String {
    if answer.entries.is_empty() {
        return "no flag changes recorded yet".to_owned();
    }
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            one_line(s)
        }
    };
    let rows: Vec<Vec<String>> = answer
        .entries
        .iter()
        .map(|e| {
            vec![
                dash(&e.ts),
                dash(&e.actor),
                dash(&e.route),
                describe_change(e.before.as_ref(), e.after.as_ref()),
                e.version.to_string(),
            ]
        })
        .collect();
    table(&["TS", "ACTOR", "ROUTE", "CHANGE", "VERSION"], &rows)
}

/// One audit entry's change in words: `dual → rollout 25%`, `(none) → legacy`,
/// `rollout 25%: allow +user:bob`. A route without a table (`None`) is `(none)`.
pub fn describe_change(before: Option<&RouteFlag>, after: Option<&RouteFlag>) -> String {
    let short = |f: Option<&RouteFlag>| f.map_or_else(|| "(none)".to_owned(), flag_short);
    let Some(after_flag) = after else {
        return format!("{} → (none)", short(before));
    };
    let (b, a) = (short(before), short(after));
    let mut parts = Vec::new();
    if b != a {
        parts.push(format!("{b} → {a}"));
    }
    let default = RouteFlag::LEGACY;
    let before_flag = before.unwrap_or(&default);
    let (sb, sa) = (before_flag.sticky.as_str(), after_flag.sticky.as_str());
    if sb != sa {
        parts.push(if before.is_none() {
            format!("sticky {sa}")
        } else {
            format!("sticky {sb} → {sa}")
        });
    }
    if before_flag.strict != after_flag.strict {
        parts.push(
            if after_flag.strict {
                "strict on"
            } else {
                "strict off"
            }
            .to_owned(),
        );
    }
    for (key, eb, ea) in [
        (
            "allow",
            entries(&before_flag.allow),
            entries(&after_flag.allow),
        ),
        (
            "deny",
            entries(&before_flag.deny),
            entries(&after_flag.deny),
        ),
    ] {
        let mut diff: Vec<String> = ea
            .iter()
            .filter(|e| !eb.contains(e))
            .map(|e| format!("+{e}"))
            .collect();
        diff.extend(
            eb.iter()
                .filter(|e| !ea.contains(e))
                .map(|e| format!("-{e}")),
        );
        if !diff.is_empty() {
            parts.push(format!("{key} {}", diff.join(" ")));
        }
    }
    match parts.len() {
        0 => format!("{a} (no change)"),
        _ if b == a => format!("{a}: {}", parts.join(", ")),
        _ => parts.join(", "),
    }
}

/// `chat: rollout 25% (sticky user) · version 8`.
pub fn render_set(route: &str, answer: &Changed) -> String {
    let route = if answer.route.is_empty() {
        route
    } else {
        &answer.route
    };
    let flag = &answer.flag;
    let mut line = format!("{route}: {}", flag_short(flag));
    let mut notes = Vec::new();
    if flag.mode == Mode::Rollout {
        notes.push(format!("sticky {}", flag.sticky.as_str()));
    }
    if flag.strict {
        notes.push("strict".to_owned());
    }
    if !notes.is_empty() {
        line.push_str(&format!(" ({})", notes.join(", ")));
    }
    for (key, list) in [("allow", &flag.allow), ("deny", &flag.deny)] {
        if !list.is_empty() {
            line.push_str(&format!(" · {key} {}", list_cell(&entries(list))));
        }
    }
    line.push_str(&format!(" · version {}", answer.version));
    line
}

/// `chat rolled back to legacy · version 9`.
pub fn render_rollback(route: &str, answer: &Changed) -> String {
    let route = if answer.route.is_empty() {
        route
    } else {
        &answer.route
    };
    format!(
        "{route} rolled back to {} · version {}",
        answer.flag.mode.as_str(),
        answer.version
    )
}

/// `rollout 25%` for a rollout, else the mode alone.
fn flag_short(flag: &RouteFlag) -> String {
    if flag.mode == Mode::Rollout {
        format!("rollout {}%", percent_text(flag.percent))
    } else {
        flag.mode.as_str().to_owned()
    }
}

fn entries(list: &[SubjectRef]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

/// A percent as written by a person: `25`, `12.5`, `25.37`.
fn percent_text(p: Percent) -> String {
    format_percent(p.as_f64())
}

/// `25.0` → `25`, `12.5` → `12.5`, `25.37` → `25.37` (rounded to basis points first).
pub fn format_percent(p: f64) -> String {
    let bp = (p * 100.0).round() as i64;
    let (sign, bp) = if bp < 0 { ("-", -bp) } else { ("", bp) };
    let (int, frac) = (bp / 100, bp % 100);
    match frac {
        0 => format!("{sign}{int}"),
        f if f % 10 == 0 => format!("{sign}{int}.{}", f / 10),
        f => format!("{sign}{int}.{f:02}"),
    }
}

/// A list cell: `-` when empty, up to three entries, else two and `+N more`.
fn list_cell(entries: &[String]) -> String {
    match entries.len() {
        0 => "-".to_owned(),
        1..=3 => entries.join(","),
        n => format!("{},+{} more", entries[..2].join(","), n - 2),
    }
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            if i + 1 < cells.len() {
                s.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The answers as the bridge sends them (JSON), read as the client reads them: these
    // wrappers shadow the typed renderers, so each test states its answer as JSON.
    fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
        T::deserialize(v).unwrap_or_else(|e| panic!("not an admin API answer: {e}: {v}"))
    }

    fn render_list(answer: &Value) -> String {
        super::render_list(&typed(answer))
    }

    fn render_history(answer: &Value) -> String {
        super::render_history(&typed(answer))
    }

    fn render_set(route: &str, answer: &Value) -> String {
        super::render_set(route, &typed(answer))
    }

    fn render_rollback(route: &str, answer: &Value) -> String {
        super::render_rollback(route, &typed(answer))
    }

    fn describe_change(before: &Value, after: &Value) -> String {
        let flag = |v: &Value| (!v.is_null()).then(|| typed::<RouteFlag>(v));
        super::describe_change(flag(before).as_ref(), flag(after).as_ref())
    }

    fn sample_list() -> Value {
        json!({
            "version": 7,
            "routes": {
                "tools": {"mode": "dual", "percent": 0.0, "sticky": "user", "allow": [], "deny": [], "strict": false},
                "chat": {"mode": "rollout", "percent": 25.0, "sticky": "user", "allow": ["user:alice"], "deny": [], "strict": false},
                "agent": {"mode": "new", "percent": 0.0, "sticky": "tenant", "allow": [], "deny": ["tenant:acme", "tenant:b", "user:c", "user:d"], "strict": true}
            },
            "reload": {"ok": true, "error": null, "at": "2026-11-21T12:00:00.000Z"}
        })
    }

    fn set_args(mode: &str) -> SetArgs {
        SetArgs {
            route: "chat".to_owned(),
            mode: mode.to_owned(),
            ..SetArgs::default()
        }
    }

    fn invalid_message(r: Result<Call, ClientError>) -> String {
        match r {
            Err(ClientError::Invalid(m)) => m,
            other => panic!("expected a local error, got {other:?}"),
        }
    }

    #[test]
    fn list_renders_a_sorted_table_and_the_reload_line() {
        let out = render_list(&sample_list());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "ROUTE  MODE     PERCENT  STICKY  STRICT  ALLOW       DENY",
                "agent  new      -        tenant  yes     -           tenant:acme,tenant:b,+2 more",
                "chat   rollout  25%      user    no      user:alice  -",
                "tools  dual     -        user    no      -           -",
                "flags version 7 · last reload ok at 2026-11-21T12:00:00.000Z",
            ]
        );
    }

    #[test]
    fn list_reports_a_failed_reload_and_no_routes() {
        let out = render_list(&json!({
            "version": 3,
            "routes": {},
            "reload": {"ok": false, "error": "flags.toml: route.chat.percent:\n more than two decimals", "at": "T"}
        }));
        assert_eq!(
            out,
            "no route has a flag table (every route is legacy)\n\
             flags version 3 · last reload FAILED at T: flags.toml: route.chat.percent: more than two decimals (the last good flags are still served)"
        );
    }

    #[test]
    fn history_renders_changes_newest_first() {
        let out = render_history(&json!({"entries": [
            {"ts": "2026-11-21T12:05:00Z", "actor": "alice", "route": "chat",
             "before": {"mode": "dual"}, "after": {"mode": "rollout", "percent": 25.0}, "version": 8},
            {"ts": "2026-11-21T12:00:00Z", "actor": "file", "route": "tools",
             "before": null, "after": {"mode": "legacy"}, "version": 7},
            {"ts": "2026-11-21T11:00:00Z", "actor": null, "route": "agent",
             "before": {"mode": "new"}, "after": null, "version": 6}
        ]}));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "TS                    ACTOR  ROUTE  CHANGE              VERSION",
                "2026-11-21T12:05:00Z  alice  chat   dual → rollout 25%  8",
                "2026-11-21T12:00:00Z  file   tools  (none) → legacy     7",
                "2026-11-21T11:00:00Z  -      agent  new → (none)        6",
            ]
        );
        assert_eq!(
            render_history(&json!({"entries": []})),
            "no flag changes recorded yet"
        );
    }

    #[test]
    fn describe_change_names_what_moved() {
        let rollout = |p: f64| json!({"mode": "rollout", "percent": p, "sticky": "user", "allow": [], "deny": [], "strict": false});
        assert_eq!(
            describe_change(&Value::Null, &json!({"mode": "legacy"})),
            "(none) → legacy"
        );
        assert_eq!(
            describe_change(&json!({"mode": "dual"}), &rollout(25.0)),
            "dual → rollout 25%"
        );
        assert_eq!(
            describe_change(&rollout(10.0), &rollout(12.5)),
            "rollout 10% → rollout 12.5%"
        );
        assert_eq!(
            describe_change(&rollout(25.0), &rollout(25.0)),
            "rollout 25% (no change)"
        );
        assert_eq!(
            describe_change(&rollout(25.0), &Value::Null),
            "rollout 25% → (none)"
        );
        let mut changed = rollout(25.0);
        changed["allow"] = json!(["user:bob"]);
        changed["deny"] = json!(["tenant:acme"]);
        changed["strict"] = json!(true);
        changed["sticky"] = json!("session");
        let mut before = rollout(25.0);
        before["allow"] = json!(["user:alice"]);
        assert_eq!(
            describe_change(&before, &changed),
            "rollout 25%: sticky user → session, strict on, allow +user:bob -user:alice, deny +tenant:acme"
        );
        assert_eq!(
            describe_change(
                &Value::Null,
                &json!({"mode": "dual", "sticky": "tenant", "allow": ["user:a"]})
            ),
            "(none) → dual, sticky tenant, allow +user:a"
        );
        assert_eq!(
            describe_change(
                &json!({"mode": "legacy", "strict": true}),
                &json!({"mode": "new"})
            ),
            "legacy → new, strict off"
        );
    }

    #[test]
    fn set_and_rollback_lines() {
        let set = json!({"version": 8, "route": "chat", "flag": {"mode": "rollout", "percent": 25.0, "sticky": "user", "allow": [], "deny": [], "strict": false}});
        assert_eq!(
            render_set("chat", &set),
            "chat: rollout 25% (sticky user) · version 8"
        );
        let set = json!({"version": 9, "route": "chat", "flag": {"mode": "dual", "percent": 0.0, "sticky": "user", "allow": ["user:alice"], "deny": ["tenant:acme"], "strict": true}});
        assert_eq!(
            render_set("chat", &set),
            "chat: dual (strict) · allow user:alice · deny tenant:acme · version 9"
        );
        let rb = json!({"version": 9, "route": "chat", "flag": {"mode": "legacy"}});
        assert_eq!(
            render_rollback("chat", &rb),
            "chat rolled back to legacy · version 9"
        );
    }

    #[test]
    fn percents_are_exact_with_two_decimals() {
        assert_eq!(parse_percent("25"), Some(2500));
        assert_eq!(parse_percent("25.37"), Some(2537));
        assert_eq!(parse_percent("9.95"), Some(995));
        assert_eq!(parse_percent("12.5"), Some(1250));
        assert_eq!(parse_percent(" 25% "), Some(2500));
        assert_eq!(parse_percent("0"), Some(0));
        assert_eq!(parse_percent("100.00"), Some(10_000));
        for bad in [
            "25.375", "100.01", "101", "-1", "abc", "", "0x10", "1000", "2 5", "1e3",
        ] {
            assert_eq!(parse_percent(bad), None, "{bad:?} should be refused");
        }
        // The bridge's own rule: any decimal literal with the same exact value.
        assert_eq!(parse_percent(".5"), Some(50));
        assert_eq!(parse_percent("+5"), Some(500));
        assert_eq!(parse_percent("2.537e1"), Some(2537));
        assert_eq!(format_percent(25.0), "25");
        assert_eq!(format_percent(25.37), "25.37");
        assert_eq!(format_percent(9.95), "9.95");
        assert_eq!(format_percent(12.5), "12.5");
        assert_eq!(format_percent(0.05), "0.05");
        assert_eq!(format_percent(100.0), "100");
    }

    #[test]
    fn set_builds_the_whole_table_with_defaults() {
        let call = plan(&FlagsCommand::Set(set_args("dual"))).unwrap();
        assert_eq!(call.method, Method::Put);
        assert_eq!(call.path, "/admin/flags/chat");
        assert_eq!(call.if_match, None);
        assert_eq!(
            call.body,
            Some(
                json!({"mode": "dual", "percent": 0.0, "sticky": "user", "allow": [], "deny": [], "strict": false})
            )
        );
        let args = SetArgs {
            percent: Some("25.37".to_owned()),
            sticky: Some("tenant".to_owned()),
            allow: vec![
                "user:alice".to_owned(),
                " user:alice ".to_owned(),
                "session:s:1".to_owned(),
            ],
            deny: vec!["tenant:acme".to_owned()],
            strict: true,
            if_match: Some("7".to_owned()),
            ..set_args("rollout")
        };
        let call = plan(&FlagsCommand::Set(args)).unwrap();
        assert_eq!(call.if_match, Some(7));
        let body = call.body.unwrap();
        assert_eq!(
            body.to_string(),
            r#"{"mode":"rollout","percent":25.37,"sticky":"tenant","allow":["user:alice","session:s:1"],"deny":["tenant:acme"],"strict":true}"#
        );
    }

    #[test]
    fn set_refuses_bad_arguments_with_one_line_reasons() {
        let check = |args: SetArgs, expected: &str| {
            let m = invalid_message(plan(&FlagsCommand::Set(args)));
            assert!(m.contains(expected), "{m:?} should contain {expected:?}");
            assert!(!m.contains('\n'));
        };
        check(
            set_args("ramp"),
            "invalid --mode 'ramp': expected legacy, dual, rollout or new",
        );
        check(
            SetArgs {
                percent: Some("150".into()),
                ..set_args("rollout")
            },
            "invalid --percent '150': expected a number from 0 to 100",
        );
        check(
            SetArgs {
                sticky: Some("ip".into()),
                ..set_args("rollout")
            },
            "invalid --sticky 'ip': expected user, session or tenant",
        );
        check(
            SetArgs {
                allow: vec!["alice".into()],
                ..set_args("dual")
            },
            "invalid --allow 'alice': expected kind:value",
        );
        check(
            SetArgs {
                deny: vec!["org:acme".into()],
                ..set_args("dual")
            },
            "invalid --deny 'org:acme'",
        );
        check(
            SetArgs {
                deny: vec!["user:".into()],
                ..set_args("dual")
            },
            "invalid --deny 'user:'",
        );
        check(
            SetArgs {
                allow: vec!["user:a".into()],
                deny: vec!["user:a".into()],
                ..set_args("dual")
            },
            "'user:a' is in both --allow and --deny",
        );
        check(
            SetArgs {
                if_match: Some("v7".into()),
                ..set_args("dual")
            },
            "invalid --if-match 'v7'",
        );
        check(
            SetArgs {
                route: "Chat/x".into(),
                ..set_args("dual")
            },
            "invalid route name 'Chat/x'",
        );
        let m = invalid_message(plan(&FlagsCommand::Rollback { route: "".into() }));
        assert!(m.starts_with("invalid route name ''"));
    }

    #[test]
    fn other_commands_plan_their_paths() {
        assert_eq!(plan(&FlagsCommand::List).unwrap().path, "/admin/flags");
        let rb = plan(&FlagsCommand::Rollback {
            route: "chat".into(),
        })
        .unwrap();
        assert_eq!(
            (rb.method, rb.path.as_str()),
            (Method::Post, "/admin/flags/chat/rollback")
        );
        assert_eq!(
            plan(&FlagsCommand::History { limit: None }).unwrap().path,
            "/admin/audit"
        );
        assert_eq!(
            plan(&FlagsCommand::History {
                limit: Some("20".into())
            })
            .unwrap()
            .path,
            "/admin/audit?limit=20"
        );
        for bad in ["0", "-3", "ten"] {
            let m = invalid_message(plan(&FlagsCommand::History {
                limit: Some(bad.into()),
            }));
            assert!(m.starts_with(&format!("invalid --limit '{bad}'")), "{m}");
        }
    }

    #[test]
    fn status_errors_are_one_actionable_line() {
        let base = "http://127.0.0.1:8080";
        let list = plan(&FlagsCommand::List).unwrap();
        let body = |t: &str, m: &str| json!({"error": {"error_type": t, "message": m}}).to_string();
        assert_eq!(
            status_error(403, "", &list, base).to_string(),
            "the admin API refused the token (403): check SWITCHYARD_ADMIN_TOKEN (a bridge without admin.token refuses every token)"
        );
        assert_eq!(
            status_error(
                401,
                &body("unauthorized", "missing bearer token"),
                &list,
                base
            )
            .to_string(),
            "the admin API refused the token (401): check SWITCHYARD_ADMIN_TOKEN (the bridge says: missing bearer token)"
        );
        let mut set = plan(&FlagsCommand::Set(set_args("dual"))).unwrap();
        assert_eq!(
            status_error(409, &body("conflict", "stale"), &set, base).to_string(),
            "conflict (409): stale"
        );
        set.if_match = Some(7);
        assert_eq!(
            status_error(409, &body("conflict", "stale"), &set, base).to_string(),
            "version conflict (409): flags changed since version 7; run 'switchyard flags list' and retry"
        );
        assert_eq!(
            status_error(
                400,
                &body("invalid_request", "percent: more than\ntwo decimals"),
                &set,
                base
            )
            .to_string(),
            "the bridge refused the request (400): percent: more than two decimals"
        );
        assert_eq!(
            status_error(
                404,
                &body("unknown_route", "no route chat2 is configured"),
                &set,
                base
            )
            .to_string(),
            "not found (404): no route chat2 is configured"
        );
        assert_eq!(
            status_error(404, "Not Found", &list, base).to_string(),
            "not found (404): http://127.0.0.1:8080 has no /admin/flags (is --url pointing at a switchyard bridge with the admin API?)"
        );
        assert_eq!(
            status_error(502, "<html>\n<b>Bad gateway</b>\n</html>", &list, base).to_string(),
            "the bridge failed (502): <html> <b>Bad gateway</b> </html>"
        );
    }

    #[test]
    fn connection_settings_are_checked_before_sending() {
        let opts = |url: &str, token: Option<&str>| ClientOptions {
            url: url.to_owned(),
            token: token.map(str::to_owned),
            ..ClientOptions::default()
        };
        assert!(matches!(
            Api::new(&opts(DEFAULT_URL, None)),
            Err(ClientError::MissingToken)
        ));
        assert!(matches!(
            Api::new(&opts(DEFAULT_URL, Some("  "))),
            Err(ClientError::MissingToken)
        ));
        assert_eq!(
            ClientError::MissingToken.to_string(),
            "no admin token: set SWITCHYARD_ADMIN_TOKEN (or pass --token)"
        );
        for (url, why) in [
            ("localhost:8080", "expected an http:// address"),
            ("127.0.0.1:8080", "not a URL"),
            ("https://bridge", "https is not supported"),
            ("http://h/?x=1", "no query or fragment"),
        ] {
            match Api::new(&opts(url, Some("t"))) {
                Err(ClientError::Invalid(m)) => {
                    assert!(
                        m.starts_with(&format!("invalid --url '{url}': {why}")),
                        "{m}"
                    )
                }
                Err(e) => panic!("{url}: {e}"),
                Ok(_) => panic!("{url} accepted"),
            }
        }
        let api = Api::new(&opts("http://127.0.0.1:9/prefix/", Some("t"))).unwrap();
        assert_eq!(api.base, "http://127.0.0.1:9/prefix");
        let bad_actor = ClientOptions {
            actor: Some("josé".into()),
            ..opts(DEFAULT_URL, Some("t"))
        };
        assert!(
            matches!(Api::new(&bad_actor), Err(ClientError::Invalid(m)) if m.starts_with("invalid --actor"))
        );
    }

    /// A stand-in for the bridge's admin API: token `secret`, flags at version 7.
    mod fake {
        use axum::extract::{Path, RawQuery};
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post, put};
        use axum::{Json, Router};
        use serde_json::{Value, json};

        fn authorized(h: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
            if h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer secret") {
                Ok(())
            } else {
                Err((
                    StatusCode::FORBIDDEN,
                    Json(
                        json!({"error": {"error_type": "forbidden", "message": "bad admin token"}}),
                    ),
                ))
            }
        }

        type Reply = Result<Json<Value>, (StatusCode, Json<Value>)>;

        async fn list(h: HeaderMap) -> Reply {
            authorized(&h)?;
            Ok(Json(super::sample_list()))
        }

        async fn set(h: HeaderMap, Path(route): Path<String>, Json(flag): Json<Value>) -> Reply {
            authorized(&h)?;
            let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
            if header("if-match").is_some_and(|v| v != "7") {
                return Err((
                    StatusCode::CONFLICT,
                    Json(
                        json!({"error": {"error_type": "conflict", "message": "flags are at version 9"}}),
                    ),
                ));
            }
            if route == "nope" {
                return Err((
                    StatusCode::NOT_FOUND,
                    Json(
                        json!({"error": {"error_type": "unknown_route", "message": "no route nope is configured"}}),
                    ),
                ));
            }
            Ok(Json(json!({"version": 8, "route": route, "flag": flag,
                           "seen_actor": header("x-actor"), "seen_if_match": header("if-match")})))
        }

        async fn rollback(h: HeaderMap, Path(route): Path<String>) -> Reply {
            authorized(&h)?;
            Ok(Json(
                json!({"version": 9, "route": route, "flag": {"mode": "legacy", "percent": 0.0,
                           "sticky": "user", "allow": [], "deny": [], "strict": false}}),
            ))
        }

        async fn audit(h: HeaderMap, RawQuery(q): RawQuery) -> Reply {
            authorized(&h)?;
            Ok(Json(json!({"seen_query": q, "entries": [
                {"ts": "2026-11-21T12:05:00Z", "actor": "alice", "route": "chat",
                 "before": {"mode": "dual"}, "after": {"mode": "rollout", "percent": 25.0}, "version": 8}
            ]})))
        }

        /// Serves the fake on an ephemeral port; returns its base URL.
        pub async fn start() -> String {
            let app = Router::new()
                .route("/admin/flags", get(list))
                .route("/admin/flags/{route}", put(set))
                .route("/admin/flags/{route}/rollback", post(rollback))
                .route("/admin/audit", get(audit))
                .route("/not-json/admin/flags", get(|| async { "hello" }));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            format!("http://{addr}")
        }
    }

    fn opts(url: &str, json: bool) -> ClientOptions {
        ClientOptions {
            url: url.to_owned(),
            token: Some("secret".to_owned()),
            actor: Some("alice".to_owned()),
            json,
        }
    }

    #[tokio::test]
    async fn commands_against_a_fake_bridge() {
        let url = fake::start().await;
        let out = run(&opts(&url, false), &FlagsCommand::List).await.unwrap();
        assert!(out.starts_with("ROUTE  MODE"), "{out}");
        assert!(out.ends_with("flags version 7 · last reload ok at 2026-11-21T12:00:00.000Z"));

        let raw = run(&opts(&url, true), &FlagsCommand::List).await.unwrap();
        assert_eq!(serde_json::from_str::<Value>(&raw).unwrap(), sample_list());
        assert!(raw.contains("\n  \"version\": 7"), "pretty JSON: {raw}");

        let args = SetArgs {
            percent: Some("25".into()),
            allow: vec!["user:alice".into()],
            if_match: Some("7".into()),
            ..set_args("rollout")
        };
        let line = run(&opts(&url, false), &FlagsCommand::Set(args.clone()))
            .await
            .unwrap();
        assert_eq!(
            line,
            "chat: rollout 25% (sticky user) · allow user:alice · version 8"
        );
        let raw: Value = serde_json::from_str(
            &run(&opts(&url, true), &FlagsCommand::Set(args.clone()))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(raw["seen_actor"], "alice");
        assert_eq!(raw["seen_if_match"], "7");
        assert_eq!(raw["flag"]["percent"], 25.0);

        let stale = SetArgs {
            if_match: Some("6".into()),
            ..args.clone()
        };
        let err = run(&opts(&url, false), &FlagsCommand::Set(stale))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "version conflict (409): flags changed since version 6; run 'switchyard flags list' and retry"
        );
        let unknown = SetArgs {
            route: "nope".into(),
            if_match: None,
            ..args
        };
        let err = run(&opts(&url, false), &FlagsCommand::Set(unknown))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "not found (404): no route nope is configured"
        );

        let line = run(
            &opts(&url, false),
            &FlagsCommand::Rollback {
                route: "chat".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(line, "chat rolled back to legacy · version 9");

        let hist = FlagsCommand::History {
            limit: Some("5".into()),
        };
        let out = run(&opts(&url, false), &hist).await.unwrap();
        assert!(out.contains("alice  chat   dual → rollout 25%  8"), "{out}");
        let raw: Value =
            serde_json::from_str(&run(&opts(&url, true), &hist).await.unwrap()).unwrap();
        assert_eq!(raw["seen_query"], "limit=5");

        let wrong = ClientOptions {
            token: Some("nope".into()),
            ..opts(&url, false)
        };
        let err = run(&wrong, &FlagsCommand::List).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the admin API refused the token (403): check SWITCHYARD_ADMIN_TOKEN (the bridge says: bad admin token)"
        );

        let err = run(
            &opts(&format!("{url}/not-json"), false),
            &FlagsCommand::List,
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("/admin/flags answered 200 with a body that is not JSON"),
            "{err}"
        );
        let err = run(
            &opts(&format!("{url}/elsewhere"), false),
            &FlagsCommand::List,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().starts_with("not found (404): "), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_bridge_is_one_line() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = run(&opts(&url, false), &FlagsCommand::List)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the bridge at {url}: connection refused (is it running? set --url)"
            )
        );
    }

    #[test]
    fn local_checks_happen_before_the_token_is_needed() {
        let no_token = ClientOptions {
            url: DEFAULT_URL.to_owned(),
            ..ClientOptions::default()
        };
        let err = run_blocking(&no_token, &FlagsCommand::Set(set_args("ramp"))).unwrap_err();
        assert!(matches!(err, ClientError::Invalid(_)));
        let err = run_blocking(&no_token, &FlagsCommand::List).unwrap_err();
        assert_eq!(err, ClientError::MissingToken);
    }
}
