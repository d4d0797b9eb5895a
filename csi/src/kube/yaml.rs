//! A JSON value written as block-style YAML, deterministically (the order
//! of the value's maps), for the generated files the chart holds (the
//! CRDs). Pure, no IO.
//!
//! Invariant: what it writes reads back as the same value in any YAML 1.1
//! or 1.2 reader: a string is written plain only when it cannot be read as
//! anything else (starts with a letter, only letters, digits and `_./-`,
//! and is none of YAML 1.1's booleans or null); every other string is
//! written JSON-quoted, which is a valid YAML double-quoted scalar.

use serde_json::Value;

/// Appends `value` to `out` as a YAML document body.
pub fn write(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) if !map.is_empty() => write_map(out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(out, items, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, at: usize) {
    for (key, value) in map {
        indent(out, at);
        out.push_str(&string(key));
        out.push(':');
        write_child(out, value, at);
    }
}

fn write_seq(out: &mut String, items: &[Value], at: usize) {
    for item in items {
        indent(out, at);
        out.push('-');
        match item {
            Value::Object(map) if !map.is_empty() => {
                out.push(' ');
                write_map_in_item(out, map, at + 2);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_seq(out, inner, at + 2);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

/// A map as a sequence item: its first key follows the item's "- ".
fn write_map_in_item(out: &mut String, map: &serde_json::Map<String, Value>, at: usize) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            indent(out, at);
        }
        out.push_str(&string(key));
        out.push(':');
        write_child(out, value, at);
    }
}

/// After `key:` (the key at `key_at`): a scalar on the same line, a map
/// on the next lines two deeper, a sequence at the key's own indentation.
fn write_child(out: &mut String, value: &Value, key_at: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, key_at + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, key_at);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// YAML 1.1 words a plain scalar would be read as (booleans, null).
const RESERVED: [&str; 11] = [
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "",
];

fn string(s: &str) -> String {
    let plain = s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn yaml(v: &Value) -> String {
        let mut out = String::new();
        write(&mut out, v);
        out
    }

    #[test]
    fn maps_sequences_and_scalars_in_block_style() {
        let v = json!({
            "a": 1,
            "b": {"c": [true, "x y", {"d": "e", "f": []}], "g": {}},
            "h": [[1, 2]],
            "no": "on",
            "n": null
        });
        assert_eq!(
            yaml(&v),
            "a: 1\nb:\n  c:\n  - true\n  - \"x y\"\n  - d: e\n    f: []\n  g: {}\nh:\n-\n  - 1\n  - 2\n\"n\": null\n\"no\": \"on\"\n"
        );
    }

    #[test]
    fn strings_that_could_read_as_something_else_are_quoted() {
        for s in [
            "yes", "True", "1", "1.5", "-a", ".a", "a: b", "a#b", "", "é", "a\nb",
        ] {
            assert!(string(s).starts_with('"'), "{s:?}");
        }
        for s in [
            "abc",
            "v1alpha1",
            "cstor.openebs.io",
            ".spec.node",
            "a-b_c/d",
        ] {
            let want = !s.starts_with('.');
            assert_eq!(!string(s).starts_with('"'), want, "{s:?}");
        }
    }
}
