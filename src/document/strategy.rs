//! Write strategies: replace, shallow merge, deep merge, RFC 7396 merge patch
//! and RFC 6902 JSON Patch, chosen from the request's `Content-Type`.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::body::parse_json;
use super::{DocumentLimits, Preconditions};
use crate::error::Error;

const JSON: &str = "application/json";
const MERGE_PATCH: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

/// How a write changes a document; these names also appear in change events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Strategy {
    /// `PUT`: the body becomes the document.
    #[serde(rename = "replace")]
    Replace,
    /// `application/json`, `strategy=merge`: top-level keys of the body overwrite the document's.
    #[serde(rename = "merge")]
    Merge,
    /// `application/json`, `strategy=deepMerge`: objects merge recursively; `null` is stored.
    #[serde(rename = "deepMerge")]
    DeepMerge,
    /// `application/merge-patch+json` (RFC 7396): recursive, `null` removes a key.
    #[serde(rename = "merge-patch")]
    MergePatch,
    /// `application/json-patch+json` (RFC 6902), including `test`.
    #[serde(rename = "json-patch")]
    JsonPatch,
}

/// A validated write request: the body as sent and how to apply it.
#[derive(Debug, Clone)]
pub struct Write {
    strategy: Strategy,
    sent: Value,
    operations: json_patch::Patch,
    reset: bool,
}

impl Write {
    /// A `PUT`: the body (`application/json`) replaces the document.
    pub fn replace(content_type: Option<&str>, body: &[u8]) -> Result<Self, Error> {
        Ok(Self::new(Strategy::Replace, json_body(content_type, body)?))
    }

    /// A `DELETE` of a document: it becomes `{}`.
    pub fn reset() -> Self {
        Self {
            reset: true,
            ..Self::new(Strategy::Replace, Value::Object(Map::new()))
        }
    }

    /// Whether this is a `DELETE` of the document (its event differs).
    pub fn is_reset(&self) -> bool {
        self.reset
    }

    /// A `PATCH`, its strategy picked by `Content-Type` and, for plain JSON,
    /// the `strategy` query parameter.
    pub fn patch(
        content_type: Option<&str>,
        strategy: Option<&str>,
        body: &[u8],
    ) -> Result<Self, Error> {
        let media_type = media_type(content_type);
        let strategy = match (media_type.as_deref(), strategy) {
            (Some(JSON), None | Some("merge")) => Strategy::Merge,
            (Some(JSON), Some("deepMerge")) => Strategy::DeepMerge,
            (Some(JSON), Some(other)) => {
                return Err(Error::bad_request(
                    "invalid-strategy",
                    format!("unknown strategy {other:?}; use merge or deepMerge"),
                ));
            }
            (Some(MERGE_PATCH | JSON_PATCH), Some(_)) => {
                return Err(Error::bad_request(
                    "strategy-not-allowed",
                    "the strategy parameter applies to application/json only; \
                     merge-patch and json-patch bodies define their own semantics",
                ));
            }
            (Some(MERGE_PATCH), None) => Strategy::MergePatch,
            (Some(JSON_PATCH), None) => Strategy::JsonPatch,
            _ => return Err(unsupported_media_type(&[JSON, MERGE_PATCH, JSON_PATCH])),
        };
        let sent = parse_json(body)?;
        let mut write = Self::new(strategy, sent);
        match strategy {
            Strategy::Merge | Strategy::DeepMerge if !write.sent.is_object() => {
                return Err(Error::bad_request(
                    "invalid-patch",
                    "a merge body must be a JSON object",
                ));
            }
            Strategy::JsonPatch => {
                write.operations = serde_json::from_value(write.sent.clone()).map_err(|err| {
                    Error::bad_request(
                        "invalid-patch",
                        format!("not a JSON Patch (RFC 6902) document: {err}"),
                    )
                })?;
            }
            _ => {}
        }
        Ok(write)
    }

    /// A write as its change event recorded it (`strategy` and `patch`),
    /// to apply again; `None` for a patch the strategy cannot take.
    pub fn recorded(strategy: Strategy, patch: Value) -> Option<Self> {
        let mut write = Self::new(strategy, patch);
        if strategy == Strategy::JsonPatch {
            write.operations = serde_json::from_value(write.sent.clone()).ok()?;
        }
        Some(write)
    }

    fn new(strategy: Strategy, sent: Value) -> Self {
        Self {
            strategy,
            sent,
            operations: json_patch::Patch(Vec::new()),
            reset: false,
        }
    }

    /// The strategy, as named in change events.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The body exactly as the client sent it.
    pub fn sent(&self) -> &Value {
        &self.sent
    }

    /// The whole write path of every metadata scope: checks `preconditions`
    /// against `existing` (document and version; `None` when there is no
    /// document), applies the write to it (or to `{}`), and checks `limits`
    /// on the result. Returns the document to store.
    pub fn apply_checked(
        &self,
        existing: Option<(&Value, i64)>,
        preconditions: &Preconditions,
        limits: &DocumentLimits,
    ) -> Result<Value, Error> {
        preconditions.check_write(existing.map(|(_, version)| version))?;
        let empty = Value::Object(Map::new());
        let document = self.apply(existing.map_or(&empty, |(document, _)| document))?;
        limits.check(&document)?;
        Ok(document)
    }

    /// The document this write turns `current` into. Limits are checked by
    /// the caller on the result.
    pub fn apply(&self, current: &Value) -> Result<Value, Error> {
        let mut doc = current.clone();
        match self.strategy {
            Strategy::Replace => doc = self.sent.clone(),
            Strategy::Merge => shallow_merge(&mut doc, &self.sent),
            Strategy::DeepMerge => deep_merge(&mut doc, &self.sent),
            Strategy::MergePatch => json_patch::merge(&mut doc, &self.sent),
            Strategy::JsonPatch => {
                json_patch::patch(&mut doc, &self.operations).map_err(patch_error)?;
            }
        }
        Ok(doc)
    }
}

/// Top-level merge: each key of `patch` overwrites the document's; `null` is stored.
pub fn shallow_merge(doc: &mut Value, patch: &Value) {
    if let (Value::Object(target), Value::Object(source)) = (doc, patch) {
        for (key, value) in source {
            target.insert(key.clone(), value.clone());
        }
    }
}

/// Recursive merge of objects: nested objects merge key by key, anything
/// else (arrays, scalars, `null`) overwrites.
pub fn deep_merge(doc: &mut Value, patch: &Value) {
    match (doc, patch) {
        (Value::Object(target), Value::Object(source)) => {
            for (key, value) in source {
                match target.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        deep_merge(existing, value);
                    }
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (doc, patch) => *doc = patch.clone(),
    }
}

fn patch_error(err: json_patch::PatchError) -> Error {
    match err.kind {
        json_patch::PatchErrorKind::TestFailed => Error::client(
            StatusCode::CONFLICT,
            "patch-test-failed",
            format!("JSON Patch test failed: {err}"),
        ),
        _ => Error::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            "patch-not-applicable",
            format!("JSON Patch cannot be applied to the current document: {err}"),
        ),
    }
}

/// An `application/json` request body (415 for any other media type).
pub fn json_body(content_type: Option<&str>, body: &[u8]) -> Result<Value, Error> {
    match media_type(content_type).as_deref() {
        Some(JSON) => parse_json(body),
        _ => Err(unsupported_media_type(&[JSON])),
    }
}

/// The lower-cased `type/subtype` of a `Content-Type`, parameters dropped.
fn media_type(content_type: Option<&str>) -> Option<String> {
    let mime: mime::Mime = content_type?.parse().ok()?;
    Some(mime.essence_str().to_ascii_lowercase())
}

fn unsupported_media_type(accepted: &[&str]) -> Error {
    Error::client(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        format!("Content-Type must be one of: {}", accepted.join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patched(content_type: &str, strategy: Option<&str>, current: Value, body: Value) -> Value {
        let write = Write::patch(Some(content_type), strategy, body.to_string().as_bytes())
            .expect("valid patch");
        write.apply(&current).expect("applicable patch")
    }

    fn code<T: std::fmt::Debug>(result: Result<T, Error>) -> &'static str {
        match result {
            Err(Error::Client { code, .. }) => code,
            other => panic!("expected a client error, got {other:?}"),
        }
    }

    #[test]
    fn shallow_merge_replaces_top_level_keys_and_keeps_null() {
        let doc = patched(
            JSON,
            None,
            json!({"a": {"x": 1, "y": 2}, "b": 1}),
            json!({"a": {"x": 3}, "c": null}),
        );
        assert_eq!(doc, json!({"a": {"x": 3}, "b": 1, "c": null}));
    }

    #[test]
    fn deep_merge_recurses_into_objects_only() {
        let doc = patched(
            JSON,
            Some("deepMerge"),
            json!({"a": {"x": 1, "y": [1, 2]}, "b": {"k": 1}}),
            json!({"a": {"x": 3, "y": [3], "z": null}, "b": 5}),
        );
        assert_eq!(doc, json!({"a": {"x": 3, "y": [3], "z": null}, "b": 5}));
    }

    #[test]
    fn merge_patch_null_removes() {
        let doc = patched(
            "application/merge-patch+json; charset=utf-8",
            None,
            json!({"a": {"x": 1, "y": 2}, "b": 1}),
            json!({"a": {"x": null}, "b": null}),
        );
        assert_eq!(doc, json!({"a": {"y": 2}}));
    }

    #[test]
    fn json_patch_applies_operations() {
        let doc = patched(
            JSON_PATCH,
            None,
            json!({"count": 1, "tags": []}),
            json!([
                {"op": "test", "path": "/count", "value": 1},
                {"op": "replace", "path": "/count", "value": 2},
                {"op": "add", "path": "/tags/-", "value": "new"}
            ]),
        );
        assert_eq!(doc, json!({"count": 2, "tags": ["new"]}));
    }

    #[test]
    fn json_patch_failed_test_is_a_conflict_and_changes_nothing() {
        let write = Write::patch(
            Some(JSON_PATCH),
            None,
            br#"[{"op":"replace","path":"/a","value":9},{"op":"test","path":"/a","value":1}]"#,
        )
        .unwrap();
        let current = json!({"a": 1});
        let err = write.apply(&current).unwrap_err();
        assert_eq!(err.status(), StatusCode::CONFLICT);
        assert_eq!(current, json!({"a": 1}));
    }

    #[test]
    fn json_patch_on_a_missing_path_is_unprocessable() {
        let write = Write::patch(
            Some(JSON_PATCH),
            None,
            br#"[{"op":"remove","path":"/nope"}]"#,
        )
        .unwrap();
        assert_eq!(code(write.apply(&json!({}))), "patch-not-applicable");
    }

    #[test]
    fn content_type_picks_the_strategy() {
        let body = br#"{}"#;
        assert_eq!(
            Write::patch(Some("Application/JSON"), None, body)
                .unwrap()
                .strategy(),
            Strategy::Merge
        );
        assert_eq!(
            Write::patch(Some(MERGE_PATCH), None, body)
                .unwrap()
                .strategy(),
            Strategy::MergePatch
        );
        assert_eq!(
            code(Write::patch(Some("text/plain"), None, body)),
            "unsupported-media-type"
        );
        assert_eq!(
            code(Write::patch(None, None, body)),
            "unsupported-media-type"
        );
        assert_eq!(
            code(Write::patch(Some(JSON), Some("nope"), body)),
            "invalid-strategy"
        );
        assert_eq!(
            code(Write::patch(Some(MERGE_PATCH), Some("merge"), body)),
            "strategy-not-allowed"
        );
        assert_eq!(
            code(Write::patch(Some(JSON_PATCH), None, body)),
            "invalid-patch"
        );
        assert_eq!(
            code(Write::patch(Some(JSON), None, b"[1]")),
            "invalid-patch"
        );
    }

    #[test]
    fn replace_requires_json() {
        assert_eq!(
            code(Write::replace(Some("text/plain"), b"{}")),
            "unsupported-media-type"
        );
        let write = Write::replace(Some("application/json; charset=utf-8"), br#"{"a":1}"#).unwrap();
        assert_eq!(write.apply(&json!({"b": 2})).unwrap(), json!({"a": 1}));
    }
}
