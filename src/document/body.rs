//! Turning request bytes into a JSON value with client-facing errors.

use serde_json::Value;

use crate::error::Error;

/// Parses a request body as JSON.
///
/// serde_json stops at 128 levels of nesting with a syntax error; that is
/// reported as `document-too-deep` so a client learns the real reason.
pub fn parse_json(bytes: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(bytes).map_err(|err| {
        if err.to_string().starts_with("recursion limit exceeded") {
            Error::bad_request("document-too-deep", "the body nests too deeply")
        } else {
            Error::bad_request("invalid-json", format!("the body is not valid JSON: {err}"))
        }
    })
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
    fn malformed_input_is_invalid_json() {
        for body in [&b"{"[..], b"", b"\xff", br#""\ud800""#, b"1e400"] {
            assert_eq!(code(parse_json(body)), "invalid-json", "{body:?}");
        }
    }
}
