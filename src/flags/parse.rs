//! Reading flags: `flags/flags.toml` and the JSON table of `PUT /admin/flags/{route}`,
//! each into its raw form (toml's spanned document, a JSON value) and then validated
//! into the [`super::model`] types. Every problem is reported, in source order, in the
//! [`Problem`] shape (route and field), unknown fields refused.
//!
//! Pure: no I/O, no clock, no locks.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use super::model::{Flags, Mode, RouteFlag, Sticky, SubjectRef};
use super::percent::parse_decimal;
use crate::problem::{Problem, Problems, Scope, choices};

/// What the headings of flags problems call them.
pub const WHAT: &str = "the flags";

impl RouteFlag {
    /// The table of `PUT /admin/flags/{route}`, validated like a table of `flags.toml`
    /// (messages name the field but not the route, which the caller knows).
    pub fn from_json(value: &Value) -> Result<RouteFlag, Problems> {
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
                    Problem::new(format!(
                        "a route's flag must be a JSON object, found {}",
                        Lit::from_json(other).describe()
                    )),
                ));
                None
            }
        };
        match flag {
            Some(flag) if problems.is_empty() => Ok(flag),
            _ => Err(in_order(problems)),
        }
    }
}

impl Flags {
    /// Parses and validates the text of `flags.toml`. Every route must be one of
    /// `known_routes`, unless that is empty (the routes are not known: `check` on a routes
    /// file with problems of its own). All problems are reported, not just the first.
    pub fn parse_toml(text: &str, known_routes: &[&str]) -> Result<Flags, Problems> {
        use toml::de::{DeTable, DeValue};

        let (doc, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            let problems = errors
                .iter()
                .map(|e| match e.span() {
                    Some(span) => {
                        let (line, col) = line_col(text, span.start);
                        Problem::new(format!(
                            "invalid TOML at line {line}, column {col}: {}",
                            e.message()
                        ))
                    }
                    None => Problem::new(format!("invalid TOML: {}", e.message())),
                })
                .collect();
            return Err(Problems::new(WHAT, problems));
        }

        let mut problems: Vec<(usize, Problem)> = Vec::new();
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
                            Problem::field(
                                "version",
                                format!(
                                    "expected a non-negative integer, found {}",
                                    Lit::from_toml(value.get_ref()).describe()
                                ),
                            ),
                        ));
                    }
                }
                "route" => match value.get_ref() {
                    DeValue::Table(table) => {
                        for (name, table) in table.iter() {
                            let pos = name.span().start;
                            let name: &str = name.get_ref().as_ref();
                            if !known_routes.is_empty() && !known_routes.contains(&name) {
                                problems.push((
                                    pos,
                                    Problem::new(format!(
                                        "unknown route (known routes: {})",
                                        known_routes.join(", ")
                                    ))
                                    .in_scope(Scope::Route(name.to_string())),
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
                                    Problem::new(format!(
                                        "expected a table [route.{name}], found {}",
                                        Lit::from_toml(other).describe()
                                    ))
                                    .in_scope(Scope::Route(name.to_string())),
                                )),
                            }
                        }
                    }
                    other => problems.push((
                        pos,
                        Problem::field(
                            "route",
                            format!(
                                "expected tables [route.<name>], found {}",
                                Lit::from_toml(other).describe()
                            ),
                        ),
                    )),
                },
                other => problems.push((
                    pos,
                    Problem::field(
                        other,
                        "unknown field (expected version or [route.<name>] tables)",
                    ),
                )),
            }
        }
        if !saw_version {
            problems.push((
                0,
                Problem::field("version", "missing (expected a non-negative integer)"),
            ));
        }
        match version {
            Some(version) if problems.is_empty() => Ok(Flags { version, routes }),
            _ => Err(in_order(problems)),
        }
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
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

/// The fields of a route's table, as [`RouteFlag`] serialises them.
fn route_fields() -> String {
    match serde_json::to_value(RouteFlag::LEGACY) {
        Ok(Value::Object(m)) => m.keys().map(String::as_str).collect::<Vec<_>>().join(", "),
        _ => String::new(),
    }
}

fn modes() -> String {
    choices(Mode::ALL.map(Mode::as_str))
}

fn sticky_keys() -> String {
    choices(Sticky::ALL.map(Sticky::as_str))
}

/// Validates one route's fields, pushing every problem with its position (`at`: where in
/// the source the route starts; each field carries its own); `Some` only when there was
/// none for this route.
fn validate_route<'a>(
    route: Option<&str>,
    at: usize,
    fields: impl Iterator<Item = (&'a str, usize, Lit<'a>)>,
    problems: &mut Vec<(usize, Problem)>,
) -> Option<RouteFlag> {
    let before = problems.len();
    let mut push = |pos: usize, field: &str, msg: String| {
        let mut p = Problem::field(field, msg);
        p.scope = route.map(|r| Scope::Route(r.to_string()));
        problems.push((pos, p))
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
                        None => push(format!("{s:?} is not a mode (expected {})", modes())),
                    },
                    other => push(format!(
                        "expected a string ({}), found {}",
                        modes(),
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
                        "{s:?} is not a sticky key (expected {})",
                        sticky_keys()
                    )),
                },
                other => push(format!(
                    "expected a string ({}), found {}",
                    sticky_keys(),
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
                route_fields()
            )),
        }
    }
    if !mode_seen {
        push(at, "mode", format!("missing (expected {})", modes()));
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
fn in_order(mut problems: Vec<(usize, Problem)>) -> Problems {
    problems.sort_by_key(|(pos, _)| *pos);
    Problems::new(WHAT, problems.into_iter().map(|(_, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::Percent;
    use crate::request::Subject;
    use proptest::prelude::*;
    use serde_json::json;

    const KNOWN: &[&str] = &["chat", "agent", "tools"];

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
        RouteFlag::from_json(&v).map_err(|e| e.lines())
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
                r#"field `mode`: "fast" is not a mode (expected legacy, dual, rollout or new)"#,
                r#"field `percent`: 100.5 is out of range 0..=100"#,
                r#"field `sticky`: "device" is not a sticky key (expected user, session or tenant)"#,
                r#"field `allow`: entry 2: "bob" is not a subject (expected user:<id>, session:<id> or tenant:<id>)"#,
                r#"field `allow`: entry 3: expected a string like "user:alice", found integer 3"#,
                r#"field `deny`: expected an array of "user:<id>", "session:<id>" or "tenant:<id>", found string "tenant:acme""#,
                r#"field `strict`: expected a boolean, found string "yes""#,
                r#"field `percnt`: unknown field (expected one of mode, percent, sticky, allow, deny, strict)"#,
            ]
        );
        assert_eq!(
            route_json(json!({})).unwrap_err(),
            vec![r#"field `mode`: missing (expected legacy, dual, rollout or new)"#]
        );
        assert_eq!(
            route_json(json!({"mode": "dual", "percent": 9.955})).unwrap_err(),
            vec![r#"field `percent`: 9.955 has more than two decimal places"#]
        );
        assert_eq!(
            route_json(json!({"mode": "dual", "percent": "25"})).unwrap_err(),
            vec![
                r#"field `percent`: expected a number 0..=100 with at most two decimal places, found string "25""#
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
            Flags::parse_toml(&doc(p), KNOWN)
                .map(|f| f.route("chat").percent.basis_points())
                .map_err(|e| e.lines())
        };
        assert_eq!(bp("25.37"), Ok(2537));
        assert_eq!(bp("9.95"), Ok(995));
        assert_eq!(bp("100"), Ok(10000));
        assert_eq!(bp("2_5.3_7"), Ok(2537));
        assert_eq!(bp("0x10"), Ok(1600));
        assert_eq!(bp("2.537e1"), Ok(2537));
        assert_eq!(
            bp("9.9500000000000001"),
            Err(vec![
                r#"route "chat", field `percent`: 9.9500000000000001 has more than two decimal places"#.to_string()
            ])
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
            e.lines(),
            vec![
                r#"field `version`: expected a non-negative integer, found integer -3"#,
                r#"field `colour`: unknown field (expected version or [route.<name>] tables)"#,
                r#"route "chat", field `mode`: "fast" is not a mode (expected legacy, dual, rollout or new)"#,
                r#"route "chat", field `percent`: 100.5 is out of range 0..=100"#,
                r#"route "agent", field `percent`: 9.955 has more than two decimal places"#,
                r#"route "agent", field `sticky`: "device" is not a sticky key (expected user, session or tenant)"#,
                r#"route "agent", field `allow`: entry 1: "bob" is not a subject (expected user:<id>, session:<id> or tenant:<id>)"#,
                r#"route "agent", field `deny`: entry 2: "user:" is not a subject (expected user:<id>, session:<id> or tenant:<id>)"#,
                r#"route "agent", field `strict`: expected a boolean, found integer 1"#,
                r#"route "agent", field `extra`: unknown field (expected one of mode, percent, sticky, allow, deny, strict)"#,
                r#"route "nope": unknown route (known routes: chat, agent, tools)"#,
                r#"route "tools", field `mode`: missing (expected legacy, dual, rollout or new)"#,
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
            e.lines(),
            vec![r#"field `version`: missing (expected a non-negative integer)"#]
        );
        let e = Flags::parse_toml("version = 1.5\n", KNOWN).unwrap_err();
        assert_eq!(
            e.lines(),
            vec![r#"field `version`: expected a non-negative integer, found float 1.5"#]
        );
        let e = Flags::parse_toml("version = 1\nroute = 3\n", KNOWN).unwrap_err();
        assert_eq!(
            e.lines(),
            vec![r#"field `route`: expected tables [route.<name>], found integer 3"#]
        );
        let e = Flags::parse_toml("version = 1\nroute.chat = \"dual\"\n", KNOWN).unwrap_err();
        assert_eq!(
            e.lines(),
            vec![r#"route "chat": expected a table [route.chat], found string "dual""#]
        );
        let e =
            Flags::parse_toml("version = 1\n[route.chat\nmode = \"dual\"\n", KNOWN).unwrap_err();
        assert!(!e.list.is_empty());
        assert!(
            e.lines()[0].starts_with("invalid TOML at line 2"),
            "{:?}",
            e.lines()
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
