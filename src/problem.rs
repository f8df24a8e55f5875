//! One shape for every problem found in what an operator writes: the config, the routes
//! file with its engine tables, the flags file, and the body of an admin `PUT`. Each says
//! where (file, route or namespace, field) and what, so `switchyard check`, start-up and
//! the admin API report problems alike and all at once.
//!
//! Owns [`Problem`], [`Problems`] (the error of every parser of those inputs), the reading
//! of a serde error into a field and a message, and the "a, b or c" lists messages name
//! choices with. It knows nothing of any file's content and does no I/O.

use std::fmt;

/// The table a problem is in, when it is not the file's top level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A `[[route]]` of the routes file, or a `[route.<name>]` table of the flags file.
    Route(String),
    /// A `[[namespace]]` of the routes file.
    Namespace(String),
}

/// One problem: `file: route "chat", field `http.path`: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, when the input is one (an admin body is not).
    pub file: Option<String>,
    pub scope: Option<Scope>,
    /// The key path inside the scope (`socketio.emit.chunk.payload`, `limits.max_streams`).
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    /// A problem with the input as a whole.
    pub fn new(message: impl Into<String>) -> Problem {
        Problem {
            file: None,
            scope: None,
            field: None,
            message: message.into(),
        }
    }

    /// A problem with one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            field: Some(field.into()),
            ..Problem::new(message)
        }
    }

    pub fn in_scope(mut self, scope: Scope) -> Problem {
        self.scope = Some(scope);
        self
    }

    pub fn in_file(mut self, file: &str) -> Problem {
        self.file = Some(file.to_string());
        self
    }

    /// A serde error (from deserializing a `toml::Value`) as a problem: its key path, when
    /// it names one, becomes the field, under `prefix` (the table it was read from).
    pub fn from_serde(prefix: &str, err: &impl fmt::Display) -> Problem {
        // toml renders a value's error as "message\nin `key.path`\n".
        let text = err.to_string();
        let text = text.trim_end();
        let (message, path) = match text.rsplit_once("\nin `") {
            Some((message, rest)) => (message, rest.strip_suffix('`')),
            None => (text, None),
        };
        let field = match (prefix, path) {
            ("", Some(p)) => p.to_string(),
            (prefix, Some(p)) => format!("{prefix}.{p}"),
            (prefix, None) => prefix.to_string(),
        };
        if field.is_empty() {
            Problem::new(message)
        } else {
            Problem::field(field, message)
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        match &self.scope {
            Some(Scope::Route(r)) => write!(f, "route \"{r}\"")?,
            Some(Scope::Namespace(n)) => write!(f, "namespace \"{n}\"")?,
            None => {}
        }
        if let Some(field) = &self.field {
            let sep = if self.scope.is_some() { ", " } else { "" };
            write!(f, "{sep}field `{field}`")?;
        }
        if self.scope.is_some() || self.field.is_some() {
            write!(f, ": ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every problem found in one input (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems {
    /// What was read, for the heading: "the routes file", "the flags", "the configuration".
    pub what: &'static str,
    pub list: Vec<Problem>,
}

impl Problems {
    pub fn new(what: &'static str, list: Vec<Problem>) -> Problems {
        Problems { what, list }
    }

    pub fn one(what: &'static str, problem: Problem) -> Problems {
        Problems::new(what, vec![problem])
    }

    /// Names `file` in every problem that does not name one yet.
    pub fn in_file(mut self, file: &str) -> Problems {
        for p in &mut self.list {
            if p.file.is_none() {
                p.file = Some(file.to_string());
            }
        }
        self
    }

    /// Each problem on its own line, as `check` and the admin API show them.
    pub fn lines(&self) -> Vec<String> {
        self.list.iter().map(Problem::to_string).collect()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.list.len();
        write!(
            f,
            "{n} problem{} in {}:",
            if n == 1 { "" } else { "s" },
            self.what
        )?;
        for p in &self.list {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// The field names of a struct's serde form, from its derive: the one list its unknown
/// keys are told against. Empty for anything that is not a struct.
pub fn fields_of<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    /// Ends with the field list the derive hands to `deserialize_struct`.
    struct Fields(&'static [&'static str]);
    impl fmt::Display for Fields {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("fields")
        }
    }
    impl fmt::Debug for Fields {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("fields")
        }
    }
    impl std::error::Error for Fields {}
    impl de::Error for Fields {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Fields(&[])
        }
    }
    struct Probe;
    impl<'de> de::Deserializer<'de> for Probe {
        type Error = Fields;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
            Err(Fields(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fields> {
            Err(Fields(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    match T::deserialize(Probe) {
        Err(Fields(fields)) => fields,
        Ok(_) => &[],
    }
}

/// `a, b or c`: the choices a message names, from the one list that defines them.
pub fn choices<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_scope_and_field() {
        let p = Problem::field("http.path", "missing")
            .in_scope(Scope::Route("chat".into()))
            .in_file("routes.toml");
        assert_eq!(
            p.to_string(),
            "routes.toml: route \"chat\", field `http.path`: missing"
        );
        assert_eq!(
            Problem::field("percent", "out of range").to_string(),
            "field `percent`: out of range"
        );
        assert_eq!(
            Problem::new("not valid TOML").in_file("f").to_string(),
            "f: not valid TOML"
        );
        let all = Problems::new("the flags", vec![Problem::new("a"), Problem::new("b")]);
        assert_eq!(all.to_string(), "2 problems in the flags:\n  - a\n  - b");
    }

    #[test]
    fn reads_the_key_path_of_a_serde_error() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            join: bool,
        }
        let v: toml::Value = toml::from_str("join = 'yes'").unwrap_or(toml::Value::Boolean(false));
        let err = v.try_into::<T>().map(|_| ()).unwrap_err();
        let p = Problem::from_serde("socketio", &err);
        assert_eq!(p.field.as_deref(), Some("socketio.join"));
        assert!(p.message.starts_with("invalid type"), "{p}");
    }

    #[test]
    fn field_names_come_from_the_derive() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            path: String,
            join_session: Option<bool>,
        }
        assert_eq!(fields_of::<T>(), ["path", "join_session"]);
        assert!(fields_of::<String>().is_empty());
    }

    #[test]
    fn lists_choices() {
        assert_eq!(choices(["a"]), "a");
        assert_eq!(choices(["a", "b", "c"]), "a, b or c");
    }
}
