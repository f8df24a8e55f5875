//! The flags model (SPEC section 5): [`Flags`] is `flags/flags.toml`, [`RouteFlag`] one
//! route's table, [`Mode`], [`Sticky`] and [`SubjectRef`], and writing them back as TOML
//! and JSON. Reading and validating them is [`super::parse`]'s; the rollout share is
//! [`super::percent`]'s.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

pub use super::percent::{Percent, PercentError};
use crate::request::Subject;

/// A route's migration mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Socket.IO only; HTTP is refused except for `allow`ed subjects.
    Legacy,
    /// Both transports served; subjects are evaluated to Socket.IO.
    Dual,
    /// Both transports served; a share of subjects is evaluated to HTTP.
    Rollout,
    /// HTTP only; Socket.IO is refused except for `deny`ed subjects.
    New,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Legacy, Mode::Dual, Mode::Rollout, Mode::New];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Legacy => "legacy",
            Mode::Dual => "dual",
            Mode::Rollout => "rollout",
            Mode::New => "new",
        }
    }

    /// The lowercase name, exactly; anything else is `None`.
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which key of a [`Subject`] a rollout sticks to; also the kind of a [`SubjectRef`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sticky {
    #[default]
    User,
    Session,
    Tenant,
}

impl Sticky {
    pub const ALL: [Sticky; 3] = [Sticky::User, Sticky::Session, Sticky::Tenant];

    pub fn as_str(self) -> &'static str {
        match self {
            Sticky::User => "user",
            Sticky::Session => "session",
            Sticky::Tenant => "tenant",
        }
    }

    /// The lowercase name, exactly; anything else is `None`.
    pub fn parse(s: &str) -> Option<Sticky> {
        Sticky::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// This key of `subject`. An empty value counts as absent: it is no sticky key and
    /// matches no `allow`/`deny` entry.
    #[inline]
    pub fn value_in(self, subject: &Subject) -> Option<&str> {
        let v = match self {
            Sticky::User => subject.user.as_deref(),
            Sticky::Session => subject.session.as_deref(),
            Sticky::Tenant => subject.tenant.as_deref(),
        };
        v.filter(|v| !v.is_empty())
    }
}

impl fmt::Display for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `allow`/`deny` entry: `"user:alice"`, `"session:s1"` or `"tenant:acme"`.
///
/// The kind is one of the three names exactly; the value is everything after the first
/// `:` and must not be empty (it may itself contain `:`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SubjectRef {
    pub kind: Sticky,
    pub value: String,
}

impl SubjectRef {
    /// Whether `subject` has this key with this value.
    #[inline]
    pub fn matches(&self, subject: &Subject) -> bool {
        self.kind.value_in(subject) == Some(self.value.as_str())
    }
}

/// A string that is not a [`SubjectRef`]; displays the offending entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not a subject (expected user:<id>, session:<id> or tenant:<id>)")]
pub struct SubjectRefError {
    pub entry: String,
}

impl FromStr for SubjectRef {
    type Err = SubjectRefError;

    fn from_str(s: &str) -> Result<SubjectRef, SubjectRefError> {
        s.split_once(':')
            .and_then(|(kind, value)| {
                let kind = Sticky::parse(kind)?;
                (!value.is_empty()).then(|| SubjectRef {
                    kind,
                    value: value.to_string(),
                })
            })
            .ok_or_else(|| SubjectRefError {
                entry: s.to_string(),
            })
    }
}

impl fmt::Display for SubjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.value)
    }
}

impl Serialize for SubjectRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SubjectRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SubjectRef, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// One route's table. Absent fields take their defaults: `percent` 0, `sticky` user,
/// empty `allow`/`deny`, `strict` false; `mode` is required.
///
/// Serialises to the SPEC shape:
/// `{"mode":"rollout","percent":25.0,"sticky":"user","allow":["user:alice"],"deny":[],"strict":false}`.
/// Deserialising goes through [`RouteFlag::from_json`]: unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteFlag {
    pub mode: Mode,
    pub percent: Percent,
    pub sticky: Sticky,
    pub allow: Vec<SubjectRef>,
    pub deny: Vec<SubjectRef>,
    pub strict: bool,
}

/// What a route without a table evaluates with.
static LEGACY_FLAG: RouteFlag = RouteFlag::LEGACY;

impl RouteFlag {
    /// `legacy` with every other field at its default: a route without a table.
    pub const LEGACY: RouteFlag = RouteFlag::new(Mode::Legacy);

    /// `mode` with every other field at its default.
    pub const fn new(mode: Mode) -> RouteFlag {
        RouteFlag {
            mode,
            percent: Percent::ZERO,
            sticky: Sticky::User,
            allow: Vec::new(),
            deny: Vec::new(),
            strict: false,
        }
    }

    /// The SPEC table shape as JSON.
    pub fn to_json(&self) -> Value {
        let num = serde_json::Number::from_f64(self.percent.as_f64())
            .unwrap_or_else(|| serde_json::Number::from(0u8));
        let list =
            |l: &[SubjectRef]| Value::Array(l.iter().map(|r| r.to_string().into()).collect());
        let mut m = serde_json::Map::new();
        m.insert("mode".into(), self.mode.as_str().into());
        m.insert("percent".into(), Value::Number(num));
        m.insert("sticky".into(), self.sticky.as_str().into());
        m.insert("allow".into(), list(&self.allow));
        m.insert("deny".into(), list(&self.deny));
        m.insert("strict".into(), self.strict.into());
        Value::Object(m)
    }
}

impl Default for RouteFlag {
    fn default() -> RouteFlag {
        RouteFlag::LEGACY
    }
}

impl<'de> Deserialize<'de> for RouteFlag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RouteFlag, D::Error> {
        let v = Value::deserialize(d)?;
        RouteFlag::from_json(&v).map_err(de::Error::custom)
    }
}

/// `flags/flags.toml`: a version and one table per route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Flags {
    pub version: u64,
    pub routes: BTreeMap<String, RouteFlag>,
}

impl Flags {
    /// A readable `flags.toml` that [`Flags::parse_toml`] reads back to `self`.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# Per-route transport flags (SPEC section 5); a route without a table is legacy.\n",
        );
        let _ = writeln!(out, "version = {}", self.version);
        for (name, flag) in &self.routes {
            let list = |l: &[SubjectRef]| {
                let items: Vec<String> = l.iter().map(|r| toml_string(&r.to_string())).collect();
                format!("[{}]", items.join(", "))
            };
            let _ = write!(
                out,
                "\n[route.{}]\nmode = \"{}\"\npercent = {}\nsticky = \"{}\"\nallow = {}\ndeny = {}\nstrict = {}\n",
                toml_key(name),
                flag.mode,
                flag.percent,
                flag.sticky,
                list(&flag.allow),
                list(&flag.deny),
                flag.strict,
            );
        }
        out
    }

    /// The table of `name`, if it has one (`before`/`after` of an audit line).
    #[inline]
    pub fn get(&self, name: &str) -> Option<&RouteFlag> {
        self.routes.get(name)
    }

    /// The flag `name` evaluates with: its table, or [`RouteFlag::LEGACY`] when it has
    /// none. Does not allocate.
    #[inline]
    pub fn route(&self, name: &str) -> &RouteFlag {
        self.routes.get(name).unwrap_or(&LEGACY_FLAG)
    }
}

/// A TOML key: bare when it can be, else a basic string.
fn toml_key(key: &str) -> Cow<'_, str> {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(toml_string(key))
    }
}

/// A TOML basic string (TOML 1.0 escapes; control characters as `\uXXXX`).
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
