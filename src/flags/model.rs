//! The flags model (SPEC section 5): [`Flags`] is `flags/flags.toml`, [`RouteFlag`] one
//! route's table, with parsing and validation that report every problem at once.
//!
//! `percent` is a decimal with at most two places, converted exactly once, from the
//! number as written, into [`Percent`] basis points; nothing compares it in floating point
//! afterwards.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

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

/// A share of subjects in basis points, `0..=10_000` (100.00 %).
///
/// Built from the decimal as written (at most two places, `0..=100`), converted exactly
/// once: `25.37` → 2537, `9.95` → 995, `100` → 10000. Serialises back as a number with the
/// same value (`25.37`, `25.0`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u16);

/// Why a number is not a [`Percent`]; displays the number as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PercentError {
    #[error("{0} is not a number")]
    NotANumber(String),
    #[error("{0} is out of range 0..=100")]
    OutOfRange(String),
    #[error("{0} has more than two decimal places")]
    TooManyPlaces(String),
}

impl Percent {
    pub const ZERO: Percent = Percent(0);
    pub const FULL: Percent = Percent(10_000);

    /// `None` above 10 000.
    pub const fn from_basis_points(bp: u16) -> Option<Percent> {
        if bp <= 10_000 {
            Some(Percent(bp))
        } else {
            None
        }
    }

    #[inline]
    pub const fn basis_points(self) -> u16 {
        self.0
    }

    /// From a finite float through its shortest round-trip decimal (what a JSON or TOML
    /// reader that only kept the `f64` can still know of the number as written).
    pub fn from_f64(f: f64) -> Result<Percent, PercentError> {
        if f.is_finite() {
            // `Display` for f64 is the shortest decimal that reads back as `f`, never in
            // exponent notation.
            parse_decimal(&f.to_string())
        } else {
            Err(PercentError::NotANumber(f.to_string()))
        }
    }

    /// The value as an `f64`, for serialisation only (nearest double to the decimal, so it
    /// reads back to the same [`Percent`]).
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl FromStr for Percent {
    type Err = PercentError;

    /// A decimal literal: optional sign, digits with an optional fraction, optional
    /// exponent (`25`, `25.37`, `2.537e1`); no `_`, `inf` or `nan`.
    fn from_str(s: &str) -> Result<Percent, PercentError> {
        parse_decimal(s)
    }
}

/// Exact decimal → basis points. The value is `digits × 10^scale`; all arithmetic is on
/// the digits, never in floating point.
fn parse_decimal(text: &str) -> Result<Percent, PercentError> {
    let not_a_number = || PercentError::NotANumber(text.to_string());
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let (neg, digits) = match e.as_bytes().first() {
                Some(b'-') => (true, &e[1..]),
                Some(b'+') => (false, &e[1..]),
                _ => (false, e),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(not_a_number());
            }
            let magnitude = digits.bytes().fold(0i64, |acc, b| {
                acc.saturating_mul(10).saturating_add(i64::from(b - b'0'))
            });
            if neg { -magnitude } else { magnitude }
        }
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(not_a_number());
    }
    let all: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let Some(first) = all.iter().position(|&d| d != 0) else {
        return Ok(Percent::ZERO); // 0, 0.00, -0.0: zero whatever its sign
    };
    if negative {
        return Err(PercentError::OutOfRange(text.to_string()));
    }
    let last = all.iter().rposition(|&d| d != 0).unwrap_or(first);
    let digits = &all[first..=last];
    let trailing_zeros = (all.len() - 1 - last) as i64;
    // value = digits × 10^scale, digits without leading or trailing zeros.
    let scale = exponent
        .saturating_sub(frac.len() as i64)
        .saturating_add(trailing_zeros);
    let len = digits.len() as i64;
    if len.saturating_add(scale) > 3 {
        // at least 1000
        return Err(PercentError::OutOfRange(text.to_string()));
    }
    // basis points = digits × 10^(scale + 2); below 100 000 since the value is below 1000.
    let bp_scale = scale.saturating_add(2);
    let (floor, remainder) = if bp_scale >= 0 {
        let mut n: u32 = 0;
        for &d in digits {
            n = n * 10 + u32::from(d);
        }
        for _ in 0..bp_scale {
            n *= 10;
        }
        (n, false)
    } else {
        // Keep the leading `len + bp_scale` digits; the dropped ones end in a non-zero digit.
        let keep = len.saturating_add(bp_scale).max(0) as usize;
        let mut n: u32 = 0;
        for &d in &digits[..keep] {
            n = n * 10 + u32::from(d);
        }
        (n, true)
    };
    if floor > 10_000 || (floor == 10_000 && remainder) {
        Err(PercentError::OutOfRange(text.to_string()))
    } else if remainder {
        Err(PercentError::TooManyPlaces(text.to_string()))
    } else {
        Ok(Percent(floor as u16))
    }
}

impl fmt::Display for Percent {
    /// `25.37`, `25.5`, `25.0`: a decimal that parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 {
            write!(f, "{int}.0")
        } else if frac % 10 == 0 {
            write!(f, "{int}.{}", frac / 10)
        } else {
            write!(f, "{int}.{frac:02}")
        }
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Percent, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number 0..=100 with at most two decimal places")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                parse_decimal(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                parse_decimal(&v.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Percent::from_f64(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
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

    /// The table of `PUT /admin/flags/{route}`, validated like a table of `flags.toml`
    /// (messages name the field but not the route, which the caller knows).
    pub fn from_json(value: &Value) -> Result<RouteFlag, FlagsError> {
        let mut problems = Vec::new();
        let flag = match value {
            Value::Object(map) => {
                // Positions are field indexes: problems come in the body's field order.
                let fields = map
                    .iter()
                    .enumerate()
                    .map(|(i, (k, v))| (k.as_str(), i, Lit::from_json(v)));
                validate_route(None, 0, fields, &mut problems)
            }
            other => {
                problems.push((
                    0,
                    format!(
                        "a route's flag must be a JSON object, found {}",
                        Lit::from_json(other).describe()
                    ),
                ));
                None
            }
        };
        match flag {
            Some(flag) if problems.is_empty() => Ok(flag),
            _ => Err(FlagsError {
                problems: in_order(problems),
            }),
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

/// Every problem found in a flags file or table, each naming its route and field, e.g.
/// `route "chat", field "percent": 100.5 is out of range 0..=100`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FlagsError {
    pub problems: Vec<String>,
}

impl fmt::Display for FlagsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{n} problem{} in the flags:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl Flags {
    /// Parses and validates the text of `flags.toml`. Every route must be one of
    /// `known_routes`. All problems are reported, not just the first.
    pub fn parse_toml(text: &str, known_routes: &[&str]) -> Result<Flags, FlagsError> {
        use toml::de::{DeTable, DeValue};

        let (doc, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            let problems = errors
                .iter()
                .map(|e| match e.span() {
                    Some(span) => {
                        let (line, col) = line_col(text, span.start);
                        format!("invalid TOML at line {line}, column {col}: {}", e.message())
                    }
                    None => format!("invalid TOML: {}", e.message()),
                })
                .collect();
            return Err(FlagsError { problems });
        }

        let mut problems: Vec<(usize, String)> = Vec::new();
        let mut version = None;
        let mut routes = BTreeMap::new();
        let mut saw_version = false;
        for (key, value) in doc.get_ref().iter() {
            let pos = key.span().start;
            match key.get_ref().as_ref() {
                "version" => {
                    saw_version = true;
                    version = parse_version(&Lit::from_toml(value.get_ref()));
                    if version.is_none() {
                        problems.push((
                            pos,
                            format!(
                                "field \"version\": expected a non-negative integer, found {}",
                                Lit::from_toml(value.get_ref()).describe()
                            ),
                        ));
                    }
                }
                "route" => match value.get_ref() {
                    DeValue::Table(table) => {
                        for (name, table) in table.iter() {
                            let pos = name.span().start;
                            let name: &str = name.get_ref().as_ref();
                            if !known_routes.contains(&name) {
                                problems.push((
                                    pos,
                                    format!(
                                        "route {name:?}: unknown route (known routes: {})",
                                        known_routes.join(", ")
                                    ),
                                ));
                            }
                            match table.get_ref() {
                                DeValue::Table(fields) => {
                                    let fields = fields.iter().map(|(k, v)| {
                                        (
                                            k.get_ref().as_ref(),
                                            k.span().start,
                                            Lit::from_toml(v.get_ref()),
                                        )
                                    });
                                    if let Some(flag) =
                                        validate_route(Some(name), pos, fields, &mut problems)
                                    {
                                        routes.insert(name.to_string(), flag);
                                    }
                                }
                                other => problems.push((
                                    pos,
                                    format!(
                                        "route {name:?}: expected a table [route.{name}], found {}",
                                        Lit::from_toml(other).describe()
                                    ),
                                )),
                            }
                        }
                    }
                    other => problems.push((
                        pos,
                        format!(
                            "field \"route\": expected tables [route.<name>], found {}",
                            Lit::from_toml(other).describe()
                        ),
                    )),
                },
                other => problems.push((
                    pos,
                    format!(
                        "field {other:?}: unknown field (expected version or [route.<name>] tables)"
                    ),
                )),
            }
        }
        if !saw_version {
            problems.push((
                0,
                "field \"version\": missing (expected a non-negative integer)".into(),
            ));
        }
        match version {
            Some(version) if problems.is_empty() => Ok(Flags { version, routes }),
            _ => Err(FlagsError {
                problems: in_order(problems),
            }),
        }
    }

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

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
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

/// A parsed value, TOML or JSON, reduced to what validation needs. Numbers keep their
/// decimal text so that `percent` is converted from the number as written.
enum Lit<'a> {
    Str(&'a str),
    Num { text: Cow<'a, str>, integer: bool },
    Bool(bool),
    Array(Vec<Lit<'a>>),
    Table,
    Other(&'static str),
}

impl<'a> Lit<'a> {
    fn from_toml(v: &'a toml::de::DeValue<'_>) -> Lit<'a> {
        use toml::de::DeValue;
        match v {
            DeValue::String(s) => Lit::Str(s.as_ref()),
            DeValue::Integer(i) if i.radix() == 10 => Lit::Num {
                text: Cow::Borrowed(i.as_str()),
                integer: true,
            },
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Lit::Num {
                    text: Cow::Owned(n.to_string()),
                    integer: true,
                },
                Err(_) => Lit::Other("an integer out of range"),
            },
            DeValue::Float(f) => Lit::Num {
                text: Cow::Borrowed(f.as_str()),
                integer: false,
            },
            DeValue::Boolean(b) => Lit::Bool(*b),
            DeValue::Datetime(_) => Lit::Other("a datetime"),
            DeValue::Array(a) => {
                Lit::Array(a.iter().map(|v| Lit::from_toml(v.get_ref())).collect())
            }
            DeValue::Table(_) => Lit::Table,
        }
    }

    fn from_json(v: &'a Value) -> Lit<'a> {
        match v {
            Value::String(s) => Lit::Str(s),
            Value::Number(n) => Lit::Num {
                text: Cow::Owned(n.to_string()),
                integer: !n.is_f64(),
            },
            Value::Bool(b) => Lit::Bool(*b),
            Value::Array(a) => Lit::Array(a.iter().map(Lit::from_json).collect()),
            Value::Object(_) => Lit::Table,
            Value::Null => Lit::Other("null"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Lit::Str(s) => format!("string {s:?}"),
            Lit::Num {
                text,
                integer: true,
            } => format!("integer {text}"),
            Lit::Num { text, .. } => format!("float {text}"),
            Lit::Bool(b) => format!("boolean {b}"),
            Lit::Array(_) => "an array".into(),
            Lit::Table => "a table".into(),
            Lit::Other(what) => (*what).into(),
        }
    }
}

fn parse_version(v: &Lit<'_>) -> Option<u64> {
    match v {
        Lit::Num {
            text,
            integer: true,
        } => text.strip_prefix('+').unwrap_or(text).parse::<u64>().ok(),
        _ => None,
    }
}

const ROUTE_FIELDS: [&str; 6] = ["mode", "percent", "sticky", "allow", "deny", "strict"];

/// Validates one route's fields, pushing every problem with its position (`at`: where in
/// the source the route starts; each field carries its own); `Some` only when there was
/// none for this route.
fn validate_route<'a>(
    route: Option<&str>,
    at: usize,
    fields: impl Iterator<Item = (&'a str, usize, Lit<'a>)>,
    problems: &mut Vec<(usize, String)>,
) -> Option<RouteFlag> {
    let before = problems.len();
    let mut push = |pos: usize, field: &str, msg: String| {
        problems.push((
            pos,
            match route {
                Some(r) => format!("route {r:?}, field {field:?}: {msg}"),
                None => format!("field {field:?}: {msg}"),
            },
        ))
    };
    let mut mode = None;
    let mut mode_seen = false;
    let mut flag = RouteFlag::LEGACY;
    for (field, pos, value) in fields {
        let mut push = |msg: String| push(pos, field, msg);
        match field {
            "mode" => {
                mode_seen = true;
                match &value {
                    Lit::Str(s) => match Mode::parse(s) {
                        Some(m) => mode = Some(m),
                        None => push(format!(
                            "{s:?} is not a mode (expected legacy, dual, rollout or new)"
                        )),
                    },
                    other => push(format!(
                        "expected a string (legacy, dual, rollout or new), found {}",
                        other.describe()
                    )),
                }
            }
            "percent" => match &value {
                Lit::Num { text, .. } => match parse_decimal(text) {
                    Ok(p) => flag.percent = p,
                    Err(e) => push(e.to_string()),
                },
                other => push(format!(
                    "expected a number 0..=100 with at most two decimal places, found {}",
                    other.describe()
                )),
            },
            "sticky" => match &value {
                Lit::Str(s) => match Sticky::parse(s) {
                    Some(k) => flag.sticky = k,
                    None => push(format!(
                        "{s:?} is not a sticky key (expected user, session or tenant)"
                    )),
                },
                other => push(format!(
                    "expected a string (user, session or tenant), found {}",
                    other.describe()
                )),
            },
            "allow" | "deny" => {
                let mut list = Vec::new();
                match &value {
                    Lit::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            match item {
                                Lit::Str(s) => match s.parse::<SubjectRef>() {
                                    Ok(r) => list.push(r),
                                    Err(e) => push(format!("entry {}: {e}", i + 1)),
                                },
                                other => push(format!(
                                    "entry {}: expected a string like \"user:alice\", found {}",
                                    i + 1,
                                    other.describe()
                                )),
                            }
                        }
                    }
                    other => push(format!(
                        "expected an array of \"user:<id>\", \"session:<id>\" or \"tenant:<id>\", found {}",
                        other.describe()
                    )),
                }
                if field == "allow" {
                    flag.allow = list;
                } else {
                    flag.deny = list;
                }
            }
            "strict" => match value {
                Lit::Bool(b) => flag.strict = b,
                other => push(format!("expected a boolean, found {}", other.describe())),
            },
            _ => push(format!(
                "unknown field (expected one of {})",
                ROUTE_FIELDS.join(", ")
            )),
        }
    }
    if !mode_seen {
        push(
            at,
            "mode",
            "missing (expected legacy, dual, rollout or new)".into(),
        );
    }
    match mode {
        Some(mode) if problems.len() == before => {
            flag.mode = mode;
            Some(flag)
        }
        _ => None,
    }
}

/// The messages, in source order (stable for equal positions).
fn in_order(mut problems: Vec<(usize, String)>) -> Vec<String> {
    problems.sort_by_key(|(pos, _)| *pos);
    problems.into_iter().map(|(_, msg)| msg).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const KNOWN: &[&str] = &["chat", "agent", "tools"];

    fn pct(s: &str) -> Result<u16, PercentError> {
        s.parse::<Percent>().map(Percent::basis_points)
    }

    #[test]
    fn percent_converts_exactly() {
        for (text, bp) in [
            ("0", 0),
            ("0.0", 0),
            ("-0", 0),
            ("-0.0", 0),
            ("0.01", 1),
            ("1", 100),
            ("9.95", 995),
            ("25", 2500),
            ("25.0", 2500),
            ("25.37", 2537),
            ("25.370", 2537),
            ("33.3", 3330),
            ("99.99", 9999),
            ("100", 10000),
            ("100.00", 10000),
            ("+5", 500),
            ("2.537e1", 2537),
            ("2537E-2", 2537),
            ("0.001e1", 1),
            ("1e2", 10000),
            ("0.29", 29),
            ("0.57", 57),
            ("1.1", 110),
            ("4.35", 435),
            ("0.07", 7),
        ] {
            assert_eq!(pct(text), Ok(bp), "{text}");
        }
    }

    #[test]
    fn percent_refuses_out_of_range_and_too_many_places() {
        use PercentError::*;
        for (text, err) in [
            ("9.955", TooManyPlaces("9.955".into())),
            ("0.001", TooManyPlaces("0.001".into())),
            ("25.371", TooManyPlaces("25.371".into())),
            (
                "9.9500000000000001",
                TooManyPlaces("9.9500000000000001".into()),
            ),
            ("100.5", OutOfRange("100.5".into())),
            ("100.01", OutOfRange("100.01".into())),
            ("100.001", OutOfRange("100.001".into())),
            ("101", OutOfRange("101".into())),
            ("1000", OutOfRange("1000".into())),
            ("1e3", OutOfRange("1e3".into())),
            (
                "1e999999999999999999999",
                OutOfRange("1e999999999999999999999".into()),
            ),
            ("-1", OutOfRange("-1".into())),
            ("-0.01", OutOfRange("-0.01".into())),
            (
                "1e-999999999999999999999",
                TooManyPlaces("1e-999999999999999999999".into()),
            ),
            ("nan", NotANumber("nan".into())),
            ("inf", NotANumber("inf".into())),
            ("", NotANumber("".into())),
            (".", NotANumber(".".into())),
            ("1e", NotANumber("1e".into())),
            ("2_5", NotANumber("2_5".into())),
            ("0x10", NotANumber("0x10".into())),
        ] {
            assert_eq!(pct(text), Err(err), "{text}");
        }
        assert!(matches!(Percent::from_f64(f64::NAN), Err(NotANumber(_))));
        assert!(matches!(
            Percent::from_f64(f64::INFINITY),
            Err(NotANumber(_))
        ));
        assert_eq!(Percent::from_f64(9.95).map(Percent::basis_points), Ok(995));
        assert_eq!(
            Percent::from_f64(25.37).map(Percent::basis_points),
            Ok(2537)
        );
        assert!(matches!(Percent::from_f64(9.955), Err(TooManyPlaces(_))));
        assert!(matches!(Percent::from_f64(1e-7), Err(TooManyPlaces(_))));
    }

    #[test]
    fn percent_display_and_serde() {
        let p = |bp| Percent::from_basis_points(bp).unwrap();
        assert_eq!(p(2537).to_string(), "25.37");
        assert_eq!(p(2550).to_string(), "25.5");
        assert_eq!(p(2500).to_string(), "25.0");
        assert_eq!(p(7).to_string(), "0.07");
        assert_eq!(p(10000).to_string(), "100.0");
        assert_eq!(serde_json::to_string(&p(2537)).unwrap(), "25.37");
        assert_eq!(serde_json::to_string(&p(2500)).unwrap(), "25.0");
        assert_eq!(serde_json::from_str::<Percent>("9.95").unwrap(), p(995));
        assert_eq!(serde_json::from_str::<Percent>("100").unwrap(), p(10000));
        assert!(serde_json::from_str::<Percent>("9.955").is_err());
        assert!(serde_json::from_str::<Percent>("-1").is_err());
        assert!(Percent::from_basis_points(10001).is_none());
    }

    proptest! {
        #[test]
        fn percent_round_trips(bp in 0u16..=10000) {
            let p = Percent::from_basis_points(bp).unwrap();
            prop_assert_eq!(p.to_string().parse::<Percent>(), Ok(p));
            prop_assert_eq!(Percent::from_f64(p.as_f64()), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            prop_assert_eq!(serde_json::from_str::<Percent>(&json).unwrap(), p);
        }
    }

    #[test]
    fn subject_refs() {
        let r: SubjectRef = "user:alice".parse().unwrap();
        assert_eq!((r.kind, r.value.as_str()), (Sticky::User, "alice"));
        let r: SubjectRef = "tenant:acme:eu".parse().unwrap();
        assert_eq!((r.kind, r.value.as_str()), (Sticky::Tenant, "acme:eu"));
        assert_eq!(r.to_string(), "tenant:acme:eu");
        assert_eq!(
            "session:s1".parse::<SubjectRef>().unwrap().kind,
            Sticky::Session
        );
        for bad in ["alice", "user:", "User:alice", "group:x", ":x", ""] {
            let e = bad.parse::<SubjectRef>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        let s = Subject {
            user: Some("alice".into()),
            session: None,
            tenant: Some("acme".into()),
        };
        assert!("user:alice".parse::<SubjectRef>().unwrap().matches(&s));
        assert!("tenant:acme".parse::<SubjectRef>().unwrap().matches(&s));
        assert!(!"session:alice".parse::<SubjectRef>().unwrap().matches(&s));
        assert!(!"user:bob".parse::<SubjectRef>().unwrap().matches(&s));
    }

    fn route_json(v: Value) -> Result<RouteFlag, Vec<String>> {
        RouteFlag::from_json(&v).map_err(|e| e.problems)
    }

    #[test]
    fn route_flag_json_shape_and_defaults() {
        let f = route_json(json!({"mode": "rollout"})).unwrap();
        assert_eq!(f, RouteFlag::new(Mode::Rollout));
        let f = route_json(json!({
            "mode": "rollout", "percent": 25.0, "sticky": "user",
            "allow": ["user:alice"], "deny": [], "strict": false
        }))
        .unwrap();
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"mode":"rollout","percent":25.0,"sticky":"user","allow":["user:alice"],"deny":[],"strict":false}"#
        );
        assert_eq!(f.to_json(), serde_json::to_value(&f).unwrap());
        assert_eq!(route_json(f.to_json()).unwrap(), f);
        assert_eq!(serde_json::from_value::<RouteFlag>(f.to_json()).unwrap(), f);
        assert_eq!(
            route_json(json!({"mode": "new", "percent": 9.95}))
                .unwrap()
                .percent,
            Percent::from_basis_points(995).unwrap()
        );
        assert_eq!(RouteFlag::default(), RouteFlag::LEGACY);
    }

    #[test]
    fn route_flag_json_reports_every_problem() {
        let problems = route_json(json!({
            "mode": "fast", "percent": 100.5, "sticky": "device",
            "allow": ["user:alice", "bob", 3], "deny": "tenant:acme", "strict": "yes",
            "percnt": 5
        }))
        .unwrap_err();
        assert_eq!(
            problems,
            vec![
                r#"field "mode": "fast" is not a mode (expected legacy, dual, rollout or new)"#,
                r#"field "percent": 100.5 is out of range 0..=100"#,
                r#"field "sticky": "device" is not a sticky key (expected user, session or tenant)"#,
                r#"field "allow": entry 2: "bob" is not a subject (expected user:<id>, session:<id> or tenant:<id>)"#,
                r#"field "allow": entry 3: expected a string like "user:alice", found integer 3"#,
                r#"field "deny": expected an array of "user:<id>", "session:<id>" or "tenant:<id>", found string "tenant:acme""#,
                r#"field "strict": expected a boolean, found string "yes""#,
                r#"field "percnt": unknown field (expected one of mode, percent, sticky, allow, deny, strict)"#,
            ]
        );
        assert_eq!(
            route_json(json!({})).unwrap_err(),
            vec![r#"field "mode": missing (expected legacy, dual, rollout or new)"#]
        );
        assert_eq!(
            route_json(json!({"mode": "dual", "percent": 9.955})).unwrap_err(),
            vec![r#"field "percent": 9.955 has more than two decimal places"#]
        );
        assert_eq!(
            route_json(json!({"mode": "dual", "percent": "25"})).unwrap_err(),
            vec![
                r#"field "percent": expected a number 0..=100 with at most two decimal places, found string "25""#
            ]
        );
        assert_eq!(
            route_json(json!(["mode"])).unwrap_err(),
            vec!["a route's flag must be a JSON object, found an array"]
        );
        assert!(serde_json::from_value::<RouteFlag>(json!({"mode": "dual", "x": 1})).is_err());
    }

    const SPEC_EXAMPLE: &str = r#"
version = 7
[route.chat]
mode = "rollout"        # legacy | dual | rollout | new
percent = 25.0          # rollout: share of subjects sent to HTTP, 0..=100, two decimals
sticky = "user"         # user | session | tenant
allow = ["user:alice"]  # always HTTP
deny = ["tenant:acme"]  # always Socket.IO
strict = false          # rollout: refuse a request on the transport its subject was not given
"#;

    #[test]
    fn parses_the_spec_example_and_the_shipped_file() {
        let f = Flags::parse_toml(SPEC_EXAMPLE, KNOWN).unwrap();
        assert_eq!(f.version, 7);
        let chat = f.route("chat");
        assert_eq!(chat.mode, Mode::Rollout);
        assert_eq!(chat.percent.basis_points(), 2500);
        assert_eq!(chat.allow, vec!["user:alice".parse().unwrap()]);
        assert_eq!(chat.deny, vec!["tenant:acme".parse().unwrap()]);
        assert!(!chat.strict);
        assert_eq!(f.route("agent"), &RouteFlag::LEGACY);
        assert!(f.get("agent").is_none());
        assert!(std::ptr::eq(f.route("agent"), f.route("tools")));

        let shipped = include_str!("../../flags/flags.example.toml");
        let f = Flags::parse_toml(shipped, KNOWN).unwrap();
        for r in KNOWN {
            assert_eq!(f.route(r).mode, Mode::Dual, "{r}");
        }
    }

    #[test]
    fn toml_percent_is_read_from_the_number_as_written() {
        let doc =
            |p: &str| format!("version = 1\n[route.chat]\nmode = \"rollout\"\npercent = {p}\n");
        let bp = |p: &str| {
            Flags::parse_toml(&doc(p), KNOWN).map(|f| f.route("chat").percent.basis_points())
        };
        assert_eq!(bp("25.37"), Ok(2537));
        assert_eq!(bp("9.95"), Ok(995));
        assert_eq!(bp("100"), Ok(10000));
        assert_eq!(bp("2_5.3_7"), Ok(2537));
        assert_eq!(bp("0x10"), Ok(1600));
        assert_eq!(bp("2.537e1"), Ok(2537));
        assert_eq!(
            bp("9.9500000000000001"),
            Err(FlagsError {
                problems: vec![
                    r#"route "chat", field "percent": 9.9500000000000001 has more than two decimal places"#.into()
                ]
            })
        );
        assert!(bp("nan").is_err());
        assert!(bp("-inf").is_err());
        assert!(bp("-3").is_err());
    }

    #[test]
    fn toml_reports_every_problem() {
        let text = r#"
version = -3
colour = "blue"
[route.chat]
mode = "fast"
percent = 100.5
[route.agent]
mode = "rollout"
percent = 9.955
sticky = "device"
allow = ["bob"]
deny = ["tenant:acme", "user:"]
strict = 1
extra = true
[route.nope]
mode = "new"
[route.tools]
percent = 5
"#;
        let e = Flags::parse_toml(text, KNOWN).unwrap_err();
        assert_eq!(
            e.problems,
            vec![
                r#"field "version": expected a non-negative integer, found integer -3"#,
                r#"field "colour": unknown field (expected version or [route.<name>] tables)"#,
                r#"route "chat", field "mode": "fast" is not a mode (expected legacy, dual, rollout or new)"#,
                r#"route "chat", field "percent": 100.5 is out of range 0..=100"#,
                r#"route "agent", field "percent": 9.955 has more than two decimal places"#,
                r#"route "agent", field "sticky": "device" is not a sticky key (expected user, session or tenant)"#,
                r#"route "agent", field "allow": entry 1: "bob" is not a subject (expected user:<id>, session:<id> or tenant:<id>)"#,
                r#"route "agent", field "deny": entry 2: "user:" is not a subject (expected user:<id>, session:<id> or tenant:<id>)"#,
                r#"route "agent", field "strict": expected a boolean, found integer 1"#,
                r#"route "agent", field "extra": unknown field (expected one of mode, percent, sticky, allow, deny, strict)"#,
                r#"route "nope": unknown route (known routes: chat, agent, tools)"#,
                r#"route "tools", field "mode": missing (expected legacy, dual, rollout or new)"#,
            ]
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with("12 problems in the flags:\n  - "),
            "{shown}"
        );
    }

    #[test]
    fn toml_version_and_syntax_problems() {
        let e = Flags::parse_toml("[route.chat]\nmode = \"dual\"\n", KNOWN).unwrap_err();
        assert_eq!(
            e.problems,
            vec![r#"field "version": missing (expected a non-negative integer)"#]
        );
        let e = Flags::parse_toml("version = 1.5\n", KNOWN).unwrap_err();
        assert_eq!(
            e.problems,
            vec![r#"field "version": expected a non-negative integer, found float 1.5"#]
        );
        let e = Flags::parse_toml("version = 1\nroute = 3\n", KNOWN).unwrap_err();
        assert_eq!(
            e.problems,
            vec![r#"field "route": expected tables [route.<name>], found integer 3"#]
        );
        let e = Flags::parse_toml("version = 1\nroute.chat = \"dual\"\n", KNOWN).unwrap_err();
        assert_eq!(
            e.problems,
            vec![r#"route "chat": expected a table [route.chat], found string "dual""#]
        );
        let e =
            Flags::parse_toml("version = 1\n[route.chat\nmode = \"dual\"\n", KNOWN).unwrap_err();
        assert!(!e.problems.is_empty());
        assert!(
            e.problems[0].starts_with("invalid TOML at line 2"),
            "{:?}",
            e.problems
        );
        assert_eq!(
            Flags::parse_toml("version = 0\n", KNOWN).unwrap(),
            Flags {
                version: 0,
                routes: BTreeMap::new()
            }
        );
        assert!(Flags::parse_toml("", KNOWN).is_err());
    }

    #[test]
    fn to_toml_is_readable_and_round_trips() {
        let f = Flags::parse_toml(SPEC_EXAMPLE, KNOWN).unwrap();
        let text = f.to_toml();
        assert_eq!(
            text,
            "# Per-route transport flags (SPEC section 5); a route without a table is legacy.\n\
             version = 7\n\
             \n\
             [route.chat]\n\
             mode = \"rollout\"\n\
             percent = 25.0\n\
             sticky = \"user\"\n\
             allow = [\"user:alice\"]\n\
             deny = [\"tenant:acme\"]\n\
             strict = false\n"
        );
        assert_eq!(Flags::parse_toml(&text, KNOWN).unwrap(), f);
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"version": 7, "routes": {"chat": {
                "mode": "rollout", "percent": 25.0, "sticky": "user",
                "allow": ["user:alice"], "deny": ["tenant:acme"], "strict": false}}})
        );
    }

    fn arb_subject_ref() -> impl Strategy<Value = SubjectRef> {
        (prop::sample::select(Sticky::ALL.to_vec()), "(?s).{1,12}")
            .prop_map(|(kind, value)| SubjectRef { kind, value })
    }

    fn arb_route_flag() -> impl Strategy<Value = RouteFlag> {
        (
            prop::sample::select(Mode::ALL.to_vec()),
            0u16..=10000,
            prop::sample::select(Sticky::ALL.to_vec()),
            prop::collection::vec(arb_subject_ref(), 0..4),
            prop::collection::vec(arb_subject_ref(), 0..4),
            any::<bool>(),
        )
            .prop_map(|(mode, bp, sticky, allow, deny, strict)| RouteFlag {
                mode,
                percent: Percent::from_basis_points(bp).unwrap(),
                sticky,
                allow,
                deny,
                strict,
            })
    }

    proptest! {
        #[test]
        fn flags_round_trip_through_toml_and_json(
            version in any::<u64>(),
            routes in prop::collection::btree_map(
                prop::sample::select(vec!["chat", "agent", "a.b", "we\"ird", "ünï", "x y", ""]),
                arb_route_flag(),
                0..4,
            ),
        ) {
            let routes: BTreeMap<String, RouteFlag> =
                routes.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let flags = Flags { version, routes };
            let known: Vec<&str> = flags.routes.keys().map(String::as_str).collect();
            let text = flags.to_toml();
            prop_assert_eq!(Flags::parse_toml(&text, &known), Ok(flags.clone()), "{}", text);
            for flag in flags.routes.values() {
                prop_assert_eq!(RouteFlag::from_json(&flag.to_json()), Ok(flag.clone()));
                let s = serde_json::to_string(flag).unwrap();
                prop_assert_eq!(serde_json::from_str::<RouteFlag>(&s).unwrap(), flag.clone());
            }
        }
    }
}
