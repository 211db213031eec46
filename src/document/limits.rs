//! Size, depth and shape limits, checked on the document a write would store.

use std::io;

use serde_json::Value;

use crate::error::Error;

/// Limits every stored document must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentLimits {
    /// Largest compact JSON encoding, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of objects and arrays (`{}` is depth 1).
    pub max_depth: usize,
}

impl Default for DocumentLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            max_depth: 32,
        }
    }
}

impl DocumentLimits {
    /// Checks a document before it is stored: an object, within the limits,
    /// and free of NUL characters (Postgres `jsonb` cannot hold them).
    pub fn check(&self, doc: &Value) -> Result<(), Error> {
        if !doc.is_object() {
            return Err(Error::bad_request(
                "document-not-object",
                "a metadata document must be a JSON object",
            ));
        }
        let shape = inspect(doc);
        if shape.has_nul {
            return Err(Error::bad_request(
                "invalid-document",
                "strings and keys must not contain the NUL character (\\u0000)",
            ));
        }
        if shape.depth > self.max_depth {
            return Err(Error::bad_request(
                "document-too-deep",
                format!(
                    "the document nests {} levels deep; the limit is {}",
                    shape.depth, self.max_depth
                ),
            ));
        }
        let size = compact_size(doc);
        if size > self.max_bytes {
            return Err(Error::client(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "document-too-large",
                format!(
                    "the document is {size} bytes as compact JSON; the limit is {}",
                    self.max_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl DocumentLimits {
    /// Whether a patch as sent may travel in its change's event: no larger
    /// and, but for the two levels a JSON Patch wraps a value in, no deeper
    /// than a document may be. A patch that builds and removes something
    /// huge or deep can leave a small document; its event must stay as
    /// small as the document's limit allows, and decodable by any client.
    pub fn fits_in_event(&self, patch: &Value) -> bool {
        inspect(patch).depth <= self.max_depth + 2 && compact_size(patch) <= self.max_bytes
    }
}

struct Shape {
    depth: usize,
    has_nul: bool,
}

/// Walks the document without recursion, so no input can exhaust the stack.
fn inspect(doc: &Value) -> Shape {
    let mut shape = Shape {
        depth: 0,
        has_nul: false,
    };
    let mut stack = vec![(doc, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::Object(map) => {
                shape.depth = shape.depth.max(depth + 1);
                for (key, child) in map {
                    shape.has_nul |= key.contains('\0');
                    stack.push((child, depth + 1));
                }
            }
            Value::Array(items) => {
                shape.depth = shape.depth.max(depth + 1);
                stack.extend(items.iter().map(|child| (child, depth + 1)));
            }
            Value::String(s) => shape.has_nul |= s.contains('\0'),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    shape
}

/// Length of the compact serde_json encoding, without allocating it.
fn compact_size(doc: &Value) -> usize {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` into an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut counter, doc);
    counter.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(depth: usize) -> Value {
        let mut doc = json!(1);
        for _ in 0..depth {
            doc = json!({ "a": doc });
        }
        doc
    }

    fn code(result: Result<(), Error>) -> &'static str {
        match result {
            Err(Error::Client { code, .. }) => code,
            other => panic!("expected a client error, got {other:?}"),
        }
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(inspect(&json!({})).depth, 1);
        assert_eq!(inspect(&json!({"a": [1, {"b": []}]})).depth, 4);
        assert_eq!(inspect(&nested(7)).depth, 7);
    }

    #[test]
    fn depth_limit_is_inclusive() {
        let limits = DocumentLimits::default();
        assert!(limits.check(&nested(32)).is_ok());
        assert_eq!(code(limits.check(&nested(33))), "document-too-deep");
    }

    #[test]
    fn size_is_measured_compact() {
        let limits = DocumentLimits {
            max_bytes: 9,
            max_depth: 32,
        };
        // {"a":"b"} is exactly 9 bytes compact, more with spaces.
        assert!(limits.check(&json!({"a": "b"})).is_ok());
        assert_eq!(
            code(limits.check(&json!({"a": "bc"}))),
            "document-too-large"
        );
    }

    #[test]
    fn documents_must_be_objects() {
        let limits = DocumentLimits::default();
        for doc in [json!([]), json!(1), json!("x"), json!(null)] {
            assert_eq!(code(limits.check(&doc)), "document-not-object");
        }
    }

    #[test]
    fn nul_characters_are_refused() {
        let limits = DocumentLimits::default();
        assert_eq!(
            code(limits.check(&json!({"a\u{0}": 1}))),
            "invalid-document"
        );
        assert_eq!(
            code(limits.check(&json!({"a": ["x\u{0}"]}))),
            "invalid-document"
        );
    }
}
