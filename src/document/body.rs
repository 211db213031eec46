//! Turning request bytes into a JSON value with client-facing errors.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::Error;

/// Start of the parse error for a NUL character (see [`Strict`]).
const NUL_ERROR: &str = "strings and keys must not contain the NUL character";
/// Start of the parse error for a repeated object key.
const DUPLICATE_ERROR: &str = "duplicate object key";

/// Parses a request body as JSON.
///
/// serde_json stops at 128 levels of nesting with a syntax error; that is
/// reported as `document-too-deep` so a client learns the real reason.
/// Unlike `serde_json::from_slice`, a repeated key is an error rather than
/// "last one wins" (RFC 8259 leaves it undefined; a client that sends one
/// has a bug we should not paper over), and so is a NUL character anywhere:
/// Postgres `jsonb` cannot store it, and even a patch whose result holds
/// none is stored as sent in its change event.
pub fn parse_json(bytes: &[u8]) -> Result<Value, Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    Strict
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|err| {
            let message = err.to_string();
            if message.starts_with("recursion limit exceeded") {
                Error::bad_request("document-too-deep", "the body nests too deeply")
            } else if message.starts_with(NUL_ERROR) {
                Error::bad_request("invalid-document", format!("{NUL_ERROR} (\\u0000)"))
            } else {
                Error::bad_request("invalid-json", format!("the body is not valid JSON: {err}"))
            }
        })
}

/// Builds a [`Value`] like serde_json's own visitor, refusing duplicate
/// keys and NUL characters.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        if v.contains('\0') {
            Err(E::custom(NUL_ERROR))
        } else {
            Ok(Value::String(v.to_owned()))
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.contains('\0') {
                return Err(de::Error::custom(NUL_ERROR));
            }
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("{DUPLICATE_ERROR} {key:?}")));
            }
            let value = map.next_value_seed(Strict)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<Value, Error>) -> &'static str {
        match result {
            Err(Error::Client { code, .. }) => code,
            other => panic!("expected a client error, got {other:?}"),
        }
    }

    #[test]
    fn parses_valid_json() {
        assert_eq!(
            parse_json(br#"{"a":1}"#).unwrap(),
            serde_json::json!({"a": 1})
        );
    }

    #[test]
    fn deep_nesting_is_a_depth_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(code(parse_json(deep.as_bytes())), "document-too-deep");
    }

    #[test]
    fn duplicate_keys_are_invalid_json_at_any_depth() {
        for body in [&br#"{"a":1,"a":1}"#[..], br#"[{"x":{"b":1,"c":2,"b":3}}]"#] {
            assert_eq!(code(parse_json(body)), "invalid-json", "{body:?}");
        }
        // Equal keys in different objects are fine.
        assert!(parse_json(br#"{"a":{"a":1},"b":{"a":2}}"#).is_ok());
    }

    #[test]
    fn nul_characters_are_refused_in_keys_and_strings() {
        for body in [
            &br#"{"a":"x\u0000"}"#[..],
            br#"{"\u0000":1}"#,
            br#"["\u0000"]"#,
        ] {
            assert_eq!(code(parse_json(body)), "invalid-document", "{body:?}");
        }
    }

    #[test]
    fn escapes_and_numbers_survive() {
        assert_eq!(
            parse_json(br#"{"a\nb":"\u00e9","n":-1.5,"u":18446744073709551615}"#).unwrap(),
            serde_json::json!({"a\nb": "\u{e9}", "n": -1.5, "u": 18446744073709551615u64})
        );
    }

    #[test]
    fn malformed_input_is_invalid_json() {
        for body in [&b"{"[..], b"", b"\xff", br#""\ud800""#, b"1e400", b"{} x"] {
            assert_eq!(code(parse_json(body)), "invalid-json", "{body:?}");
        }
    }
}
