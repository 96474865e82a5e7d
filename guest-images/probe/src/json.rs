//! Building the one JSON result line every scenario prints.
//!
//! The line always starts with `{"scenario":"<name>"` (scripts match on that
//! prefix) and holds flat key/value pairs; strings are escaped per RFC 8259 §7.

use alloc::string::String;
use core::fmt::Write;

/// A JSON object under construction, printed as one line.
pub struct JsonLine {
    buf: String,
}

impl JsonLine {
    /// Starts the line for `scenario`.
    pub fn new(scenario: &str) -> Self {
        let mut line = JsonLine {
            buf: String::with_capacity(256),
        };
        line.buf.push_str("{\"scenario\":");
        push_escaped(&mut line.buf, scenario);
        line
    }

    fn key(&mut self, key: &str) {
        self.buf.push(',');
        push_escaped(&mut self.buf, key);
        self.buf.push(':');
    }

    /// Adds a boolean.
    pub fn bool(mut self, key: &str, v: bool) -> Self {
        self.key(key);
        self.buf.push_str(if v { "true" } else { "false" });
        self
    }

    /// Adds an unsigned integer.
    pub fn u64(mut self, key: &str, v: u64) -> Self {
        self.key(key);
        let _ = write!(self.buf, "{v}");
        self
    }

    /// Adds a number with `decimals` digits after the point.
    pub fn f64(mut self, key: &str, v: f64, decimals: usize) -> Self {
        self.key(key);
        if v.is_finite() {
            let _ = write!(self.buf, "{v:.decimals$}");
        } else {
            self.buf.push_str("null");
        }
        self
    }

    /// Adds a string.
    pub fn str(mut self, key: &str, v: &str) -> Self {
        self.key(key);
        push_escaped(&mut self.buf, v);
        self
    }

    /// Adds an array of strings.
    pub fn str_array<'a>(mut self, key: &str, items: impl IntoIterator<Item = &'a str>) -> Self {
        self.key(key);
        self.buf.push('[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(',');
            }
            push_escaped(&mut self.buf, item);
        }
        self.buf.push(']');
        self
    }

    /// Closes the object and prints it as one line.
    pub fn print(mut self) {
        self.buf.push('}');
        crate::println!("{}", self.buf);
    }
}

fn push_escaped(buf: &mut String, s: &str) {
    buf.push('"');
    for c in s.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            '\t' => buf.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => buf.push(c),
        }
    }
    buf.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_per_rfc8259() {
        let mut s = String::new();
        push_escaped(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn line_shape() {
        let mut line = JsonLine::new("hello")
            .bool("ok", true)
            .u64("n", 7)
            .f64("x", 1.25, 2);
        line = line.str_array("a", ["p", "q"]);
        line.buf.push('}');
        assert_eq!(
            line.buf,
            "{\"scenario\":\"hello\",\"ok\":true,\"n\":7,\"x\":1.25,\"a\":[\"p\",\"q\"]}"
        );
        let nan = JsonLine::new("s").f64("x", f64::NAN, 1);
        assert!(nan.buf.ends_with("\"x\":null"));
    }
}
