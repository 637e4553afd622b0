//! A minimal JSON writer with fixed key order, for the documented `--json`
//! and `--format json` outputs (see docs/cli.md).

use std::fmt::Write as _;

/// A JSON value.
#[derive(Debug, Clone)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An unsigned integer.
    U64(u64),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object; keys keep their insertion order.
    Obj(Obj),
}

/// A JSON object under construction.
#[derive(Debug, Clone, Default)]
pub struct Obj(Vec<(&'static str, Json)>);

impl Obj {
    /// An empty object.
    pub fn new() -> Obj {
        Obj(Vec::new())
    }
    /// Adds a field.
    pub fn put(mut self, key: &'static str, v: impl Into<Json>) -> Obj {
        self.0.push((key, v.into()));
        self
    }
    /// Adds a field if `v` is `Some`.
    pub fn put_opt(self, key: &'static str, v: Option<impl Into<Json>>) -> Obj {
        match v {
            Some(v) => self.put(key, v),
            None => self,
        }
    }
    /// Renders on one line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        write_obj(&mut s, self);
        s
    }
}

impl From<u64> for Json {
    fn from(v: u64) -> Json {
        Json::U64(v)
    }
}
impl From<u32> for Json {
    fn from(v: u32) -> Json {
        Json::U64(u64::from(v))
    }
}
impl From<usize> for Json {
    fn from(v: usize) -> Json {
        Json::U64(v as u64)
    }
}
impl From<bool> for Json {
    fn from(v: bool) -> Json {
        Json::Bool(v)
    }
}
impl From<&str> for Json {
    fn from(v: &str) -> Json {
        Json::Str(v.to_owned())
    }
}
impl From<String> for Json {
    fn from(v: String) -> Json {
        Json::Str(v)
    }
}
impl From<Obj> for Json {
    fn from(v: Obj) -> Json {
        Json::Obj(v)
    }
}
impl<T: Into<Json>> From<Vec<T>> for Json {
    fn from(v: Vec<T>) -> Json {
        Json::Arr(v.into_iter().map(Into::into).collect())
    }
}
impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(v: Option<T>) -> Json {
        v.map_or(Json::Null, Into::into)
    }
}

fn write_obj(s: &mut String, o: &Obj) {
    s.push('{');
    for (i, (k, v)) in o.0.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write_str(s, k);
        s.push(':');
        write_value(s, v);
    }
    s.push('}');
}

fn write_value(s: &mut String, v: &Json) {
    match v {
        Json::Null => s.push_str("null"),
        Json::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Json::U64(n) => {
            let _ = write!(s, "{n}");
        }
        Json::Str(t) => write_str(s, t),
        Json::Arr(a) => {
            s.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                write_value(s, v);
            }
            s.push(']');
        }
        Json::Obj(o) => write_obj(s, o),
    }
}

/// Writes `t` as a JSON string literal (RFC 8259 escaping).
pub fn write_str(s: &mut String, t: &str) {
    s.push('"');
    for c in t.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_in_order_with_escapes() {
        let o = Obj::new()
            .put("id", 7u64)
            .put("s", "a\"b\\c\n\u{1}é")
            .put("n", Json::Null)
            .put("a", vec![1u64, 2])
            .put("o", Obj::new().put("t", true));
        assert_eq!(
            o.render(),
            r#"{"id":7,"s":"a\"b\\c\n\u0001é","n":null,"a":[1,2],"o":{"t":true}}"#
        );
    }
}
