//! Canonical JSON: the one byte form of a spec that is signed.
//!
//! Objects have their keys sorted by byte order, there is no whitespace, strings
//! use JSON's minimal escaping, and numbers are integers (the schemas have no
//! floats). Because specs are first parsed into their typed form, field order,
//! explicit defaults and YAML-vs-JSON input cannot change the bytes.

use serde_json::Value;

/// Why a JSON value has no canonical form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonicalError {
    /// A float, with its text and JSON path; records carry integers only.
    #[error("floating-point number {0} at {1}: records carry integers only")]
    Float(String, String),
}

/// Writes `value` canonically.
pub fn to_canonical_json(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out, &mut String::from("$"))?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>, path: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(CanonicalError::Float(n.to_string(), path.clone()));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                write(item, out, path)?;
                path.truncate(len);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sorting here rather than trusting the map's iteration order keeps
            // the bytes stable even if serde_json's `preserve_order` is unified in.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                let len = path.len();
                path.push('.');
                path.push_str(key);
                write(&map[key], out, path)?;
                path.truncate(len);
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_whitespace_dropped() {
        let v = json!({"b": 1, "a": {"d": [1, 2], "c": "x"}});
        let out = to_canonical_json(&v).expect("canonical");
        assert_eq!(out, br#"{"a":{"c":"x","d":[1,2]},"b":1}"#);
    }

    #[test]
    fn strings_use_minimal_escapes() {
        let v = json!("q\"\\\n\u{1}é");
        let out = to_canonical_json(&v).expect("canonical");
        assert_eq!(out, "\"q\\\"\\\\\\n\\u0001é\"".as_bytes());
    }

    #[test]
    fn floats_are_refused_with_their_path() {
        let v = json!({"a": [1.5]});
        let err = to_canonical_json(&v).expect_err("float refused");
        assert_eq!(err, CanonicalError::Float("1.5".into(), "$.a[0]".into()));
    }

    #[test]
    fn output_reparses_to_the_same_value() {
        let v = json!({"z": null, "y": true, "x": -3, "w": u64::MAX, "v": "☃"});
        let out = to_canonical_json(&v).expect("canonical");
        let back: Value = serde_json::from_slice(&out).expect("valid json");
        assert_eq!(back, v);
    }
}
