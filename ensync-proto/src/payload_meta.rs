//! The `payload_metadata` string a publish carries (PROTOCOL.md section 1), computed the
//! way the published Python client (`ensync_core.payload_utils`) computes it:
//!
//! ```text
//! {"byte_size": <len of the plaintext JSON in bytes>, "skeleton": {<top-level key>: <type>}}
//! ```
//!
//! - `byte_size` counts the bytes of the plaintext JSON **we encrypt** (the Python client
//!   counts its own `json.dumps` text, which is the plaintext it encrypts).
//! - `skeleton` maps each top-level key of a JSON object payload to its type, in document
//!   order; any other payload (array, string, ...) has an empty skeleton. Types follow
//!   Python's `json.loads` view of the text: a number written with `.`, `e` or `E` is a
//!   `double`; any other number is an integer, `integer` if it fits in i32 and `long`
//!   otherwise (any size: beyond u64 too); `true`/`false` are `boolean` (never integers);
//!   then `string`, `object`, `array`, `null`. A key given twice keeps its first position
//!   and takes the type of its last value, as a Python dict does.
//! - The string itself is written as Python's `json.dumps` writes it (`", "` and `": "`
//!   separators, non-ASCII and control characters escaped as `\uXXXX`), so it is
//!   byte-identical to the Python client's for the same plaintext.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Why `payload_metadata` could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadMetaError {
    /// The plaintext is not valid JSON (or nests deeper than serde_json's limit of 128).
    #[error("payload is not valid JSON: {0}")]
    Json(String),
}

/// The type of one top-level value in a payload skeleton.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JsonType {
    /// A JSON string.
    String,
    /// An integer in the i32 range.
    Integer,
    /// An integer outside the i32 range.
    Long,
    /// A number with a fraction or an exponent.
    Double,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// `null`.
    Null,
}

impl JsonType {
    /// The type's name as it appears in the skeleton.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Long => "long",
            Self::Double => "double",
            Self::Boolean => "boolean",
            Self::Object => "object",
            Self::Array => "array",
            Self::Null => "null",
        }
    }
}

/// The `payload_metadata` JSON string for the plaintext JSON bytes of a payload.
///
/// `plaintext_json` is exactly what gets encrypted (so `byte_size` is its length).
/// Errors only when it is not valid JSON.
pub fn payload_metadata(plaintext_json: &[u8]) -> Result<String, PayloadMetaError> {
    let fields = skeleton(plaintext_json)?;
    let mut out = format!(
        "{{\"byte_size\": {}, \"skeleton\": {{",
        plaintext_json.len()
    );
    for (i, (key, ty)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_python_json_string(&mut out, key);
        out.push_str(": \"");
        out.push_str(ty.as_str());
        out.push('"');
    }
    out.push_str("}}");
    Ok(out)
}

/// The skeleton of a payload: its top-level keys (document order, duplicates merged as a
/// Python dict merges them) with their types. Empty unless the payload is a JSON object.
pub fn skeleton(plaintext_json: &[u8]) -> Result<Vec<(String, JsonType)>, PayloadMetaError> {
    // Validate the whole text first; the scan below then only walks well-formed JSON.
    serde_json::from_slice::<serde::de::IgnoredAny>(plaintext_json)
        .map_err(|e| PayloadMetaError::Json(e.to_string()))?;
    let malformed = || PayloadMetaError::Json("unexpected structure".into());
    let mut scan = Scan {
        b: plaintext_json,
        i: 0,
    };
    scan.ws();
    if scan.peek() != Some(b'{') {
        return Ok(Vec::new());
    }
    scan.i += 1;
    let mut fields: Vec<(String, JsonType)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    loop {
        scan.ws();
        match scan.peek() {
            Some(b'}') => break,
            Some(b',') => {
                scan.i += 1;
                continue;
            }
            Some(b'"') => {}
            _ => return Err(malformed()),
        }
        let start = scan.i;
        let end = scan.string_end(start).ok_or_else(malformed)?;
        let key: String = serde_json::from_slice(&plaintext_json[start..end])
            .map_err(|e| PayloadMetaError::Json(e.to_string()))?;
        scan.i = end;
        scan.ws();
        if scan.peek() != Some(b':') {
            return Err(malformed());
        }
        scan.i += 1;
        scan.ws();
        let ty = scan.value_type().ok_or_else(malformed)?;
        match index.get(&key) {
            Some(&at) => fields[at].1 = ty,
            None => {
                index.insert(key.clone(), fields.len());
                fields.push((key, ty));
            }
        }
    }
    Ok(fields)
}

/// A cursor over JSON text already known to be valid.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// Given the index of an opening `"`, the index just past its closing `"`.
    fn string_end(&self, start: usize) -> Option<usize> {
        let mut i = start + 1;
        loop {
            match self.b.get(i)? {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
    }

    /// Classifies the value at the cursor and moves past it.
    fn value_type(&mut self) -> Option<JsonType> {
        let first = self.peek()?;
        let ty = match first {
            b'"' => {
                self.i = self.string_end(self.i)?;
                return Some(JsonType::String);
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => self.i = self.string_end(self.i)?,
                        b'{' | b'[' => {
                            depth += 1;
                            self.i += 1;
                        }
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            self.i += 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => self.i += 1,
                    }
                }
                return Some(if first == b'{' {
                    JsonType::Object
                } else {
                    JsonType::Array
                });
            }
            b't' | b'f' => JsonType::Boolean,
            b'n' => JsonType::Null,
            _ => {
                let start = self.i;
                let token_len = self.b[start..]
                    .iter()
                    .take_while(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .count();
                let token = &self.b[start..start + token_len];
                self.i = start + token_len;
                return Some(number_type(token));
            }
        };
        // true / false / null: skip the letters.
        while matches!(self.peek(), Some(b'a'..=b'z')) {
            self.i += 1;
        }
        Some(ty)
    }
}

/// Python's view of a JSON number token: float if it has a fraction or exponent, else int.
fn number_type(token: &[u8]) -> JsonType {
    if token.iter().any(|c| matches!(c, b'.' | b'e' | b'E')) {
        return JsonType::Double;
    }
    let in_i32 = std::str::from_utf8(token)
        .ok()
        .and_then(|t| t.parse::<i32>().ok())
        .is_some();
    if in_i32 {
        JsonType::Integer
    } else {
        JsonType::Long
    }
}

/// Appends `s` as a JSON string the way Python's `json.dumps` (ensure_ascii) writes it.
fn write_python_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(text: &str) -> String {
        payload_metadata(text.as_bytes()).unwrap()
    }

    fn types(text: &str) -> Vec<(String, &'static str)> {
        skeleton(text.as_bytes())
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.as_str()))
            .collect()
    }

    fn one(value: &str) -> &'static str {
        let t = types(&format!("{{\"v\":{value}}}"));
        assert_eq!(t.len(), 1, "{value}");
        t[0].1
    }

    #[test]
    fn string_type() {
        assert_eq!(one("\"x\""), "string");
        assert_eq!(one("\"with \\\" quote, } and ]\""), "string");
    }

    #[test]
    fn integer_and_long_boundaries() {
        assert_eq!(one("0"), "integer");
        assert_eq!(one("-0"), "integer");
        assert_eq!(one("2147483647"), "integer");
        assert_eq!(one("-2147483648"), "integer");
        assert_eq!(one("2147483648"), "long");
        assert_eq!(one("-2147483649"), "long");
        assert_eq!(one("9223372036854775807"), "long");
        // u64 above i64::MAX, and beyond u64: Python ints, so still long.
        assert_eq!(one("18446744073709551615"), "long");
        assert_eq!(one("123456789012345678901234567890"), "long");
    }

    #[test]
    fn double_type() {
        assert_eq!(one("1.5"), "double");
        assert_eq!(one("1.0"), "double");
        assert_eq!(one("-0.0"), "double");
        assert_eq!(one("1e5"), "double");
        assert_eq!(one("2E-3"), "double");
    }

    #[test]
    fn boolean_is_not_integer() {
        assert_eq!(one("true"), "boolean");
        assert_eq!(one("false"), "boolean");
    }

    #[test]
    fn object_array_null() {
        assert_eq!(one("{\"a\":{\"b\":[1,\"}\"]}}"), "object");
        assert_eq!(one("[1,[2,{\"x\":\"]\"}]]"), "array");
        assert_eq!(one("{}"), "object");
        assert_eq!(one("[]"), "array");
        assert_eq!(one("null"), "null");
    }

    #[test]
    fn document_order_and_duplicates() {
        assert_eq!(
            types("{\"z\":1,\"a\":\"s\",\"z\":1.5,\"m\":null}"),
            [
                ("z".to_string(), "double"),
                ("a".to_string(), "string"),
                ("m".to_string(), "null")
            ]
        );
    }

    #[test]
    fn whole_string_format() {
        let text = "{\"name\":\"x\",\"n\":1,\"big\":3000000000,\"f\":0.5,\"ok\":true,\"o\":{},\"l\":[],\"z\":null}";
        assert_eq!(
            meta(text),
            format!(
                "{{\"byte_size\": {}, \"skeleton\": {{\"name\": \"string\", \"n\": \"integer\", \
                 \"big\": \"long\", \"f\": \"double\", \"ok\": \"boolean\", \"o\": \"object\", \
                 \"l\": \"array\", \"z\": \"null\"}}}}",
                text.len()
            )
        );
        // The result is JSON that says the same.
        let v: serde_json::Value = serde_json::from_str(&meta(text)).unwrap();
        assert_eq!(v["byte_size"], text.len());
        assert_eq!(v["skeleton"]["big"], "long");
    }

    #[test]
    fn byte_size_counts_bytes_not_chars() {
        let text = "{\"k\": \"h\u{e9}llo\"}";
        assert_eq!(text.len(), 15);
        assert!(meta(text).starts_with("{\"byte_size\": 15, "));
        let spaced = "  { \"a\" : 1 }  ";
        assert_eq!(
            meta(spaced),
            "{\"byte_size\": 15, \"skeleton\": {\"a\": \"integer\"}}"
        );
    }

    #[test]
    fn non_object_payloads_have_empty_skeleton() {
        for text in ["[1,2]", "\"s\"", "12", "null", "true"] {
            assert_eq!(
                meta(text),
                format!("{{\"byte_size\": {}, \"skeleton\": {{}}}}", text.len())
            );
        }
        assert_eq!(meta("{}"), "{\"byte_size\": 2, \"skeleton\": {}}");
    }

    #[test]
    fn keys_escaped_like_python() {
        // Python: json.dumps({"q\"\\\n\u00e9\U0001F600\x7f": 1}) escapes all but printable ASCII.
        let text = "{\"q\\\"\\\\\\n\u{e9}\u{1F600}\u{7f}\\u0001\":1}";
        assert_eq!(
            meta(text),
            format!(
                "{{\"byte_size\": {}, \"skeleton\": {{\"q\\\"\\\\\\n\\u00e9\\ud83d\\ude00\\u007f\\u0001\": \"integer\"}}}}",
                text.len()
            )
        );
    }

    #[test]
    fn invalid_json_is_an_error() {
        for text in [
            "",
            "{",
            "{\"a\":}",
            "{\"a\":1}x",
            "NaN",
            "{\"a\":01}",
            "\u{0}",
        ] {
            assert!(
                matches!(
                    payload_metadata(text.as_bytes()),
                    Err(PayloadMetaError::Json(_))
                ),
                "{text:?}"
            );
        }
        assert!(payload_metadata(&[0xff, 0xfe]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = payload_metadata(&bytes);
        }

        #[test]
        fn agrees_with_serde_value_for_generated_objects(
            entries in proptest::collection::btree_map("[a-z]{1,4}", proptest::prop_oneof![
                proptest::num::i64::ANY.prop_map(serde_json::Value::from),
                proptest::num::u64::ANY.prop_map(serde_json::Value::from),
                proptest::num::f64::NORMAL.prop_map(serde_json::Value::from),
                proptest::bool::ANY.prop_map(serde_json::Value::from),
                "[a-z\"\\\\{}]{0,5}".prop_map(serde_json::Value::from),
                proptest::strategy::Just(serde_json::Value::Null),
                proptest::strategy::Just(serde_json::json!([1, {"a": "]"}])),
                proptest::strategy::Just(serde_json::json!({"x": [true]})),
            ], 0..8)
        ) {
            let object: serde_json::Map<String, serde_json::Value> = entries.into_iter().collect();
            let text = serde_json::to_vec(&object).unwrap();
            let got = skeleton(&text).unwrap();
            prop_assert_eq!(got.len(), object.len());
            for ((key, ty), (k, v)) in got.iter().zip(object.iter()) {
                prop_assert_eq!(key, k);
                let expected = match v {
                    serde_json::Value::Null => JsonType::Null,
                    serde_json::Value::Bool(_) => JsonType::Boolean,
                    serde_json::Value::String(_) => JsonType::String,
                    serde_json::Value::Array(_) => JsonType::Array,
                    serde_json::Value::Object(_) => JsonType::Object,
                    serde_json::Value::Number(n) if n.is_f64() => JsonType::Double,
                    serde_json::Value::Number(n) => match n.as_i64().map(i32::try_from) {
                        Some(Ok(_)) => JsonType::Integer,
                        _ => JsonType::Long,
                    },
                };
                prop_assert_eq!(*ty, expected, "{}", String::from_utf8_lossy(&text));
            }
        }
    }
}
