//! Versions as entity tags: `ETag: "<version>"`, `If-Match`, `If-None-Match`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};

use crate::error::Error;

/// The `ETag` for a document version.
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("a quoted integer is a valid header")
}

/// One entity tag of an `If-Match` / `If-None-Match` list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tag {
    Any,
    Strong(String),
    Weak(String),
}

/// The conditional headers of a request.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    if_match: Option<Vec<Tag>>,
    if_none_match: Option<Vec<Tag>>,
}

impl Preconditions {
    /// Reads `If-Match` and `If-None-Match`.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, Error> {
        Ok(Self {
            if_match: parse_header(headers, header::IF_MATCH)?,
            if_none_match: parse_header(headers, header::IF_NONE_MATCH)?,
        })
    }

    /// Checks a write against the current version (`None`: no document yet).
    pub fn check_write(&self, current: Option<i64>) -> Result<(), Error> {
        if let Some(tags) = &self.if_match {
            let matched = match current {
                None => false,
                Some(version) => tags.iter().any(|tag| match tag {
                    Tag::Any => true,
                    // If-Match uses the strong comparison (RFC 9110 §13.1.1).
                    Tag::Strong(opaque) => *opaque == version.to_string(),
                    Tag::Weak(_) => false,
                }),
            };
            if !matched {
                let detail = match current {
                    Some(version) => {
                        format!("If-Match does not match the current version {version}")
                    }
                    None => "If-Match given but the document does not exist".to_owned(),
                };
                return Err(Error::precondition_failed("version-mismatch", detail));
            }
        }
        if let (Some(tags), Some(version)) = (&self.if_none_match, current) {
            if tags.contains(&Tag::Any) {
                return Err(Error::precondition_failed(
                    "already-exists",
                    format!("If-None-Match: * given but the document exists at version {version}"),
                ));
            }
            if matches_weakly(tags, version) {
                return Err(Error::precondition_failed(
                    "version-match",
                    format!("If-None-Match matches the current version {version}"),
                ));
            }
        }
        Ok(())
    }

    /// Whether a `GET` may answer 304: the client already holds `version`.
    pub fn not_modified(&self, version: i64) -> bool {
        self.if_none_match
            .as_ref()
            .is_some_and(|tags| tags.contains(&Tag::Any) || matches_weakly(tags, version))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Preconditions {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::from_headers(&parts.headers)
    }
}

/// If-None-Match uses the weak comparison (RFC 9110 §13.1.2).
fn matches_weakly(tags: &[Tag], version: i64) -> bool {
    let version = version.to_string();
    tags.iter().any(|tag| match tag {
        Tag::Strong(opaque) | Tag::Weak(opaque) => *opaque == version,
        Tag::Any => false,
    })
}

fn parse_header(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<Vec<Tag>>, Error> {
    let mut values = headers.get_all(&name).iter().peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let mut tags = Vec::new();
    for value in values {
        let text = value.to_str().map_err(|_| invalid(&name))?;
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            tags.push(parse_tag(item).ok_or_else(|| invalid(&name))?);
        }
    }
    if tags.is_empty() {
        return Err(invalid(&name));
    }
    Ok(Some(tags))
}

fn parse_tag(item: &str) -> Option<Tag> {
    if item == "*" {
        return Some(Tag::Any);
    }
    let (weak, quoted) = match item.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, item),
    };
    let opaque = quoted.strip_prefix('"')?.strip_suffix('"')?;
    if opaque.contains('"') {
        return None;
    }
    let opaque = opaque.to_owned();
    Some(if weak {
        Tag::Weak(opaque)
    } else {
        Tag::Strong(opaque)
    })
}

fn invalid(name: &header::HeaderName) -> Error {
    Error::bad_request(
        "invalid-precondition",
        format!("{name} must be * or a list of quoted entity tags such as \"3\""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preconditions(if_match: Option<&str>, if_none_match: Option<&str>) -> Preconditions {
        let mut headers = HeaderMap::new();
        if let Some(value) = if_match {
            headers.insert(header::IF_MATCH, HeaderValue::from_str(value).unwrap());
        }
        if let Some(value) = if_none_match {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        }
        Preconditions::from_headers(&headers).unwrap()
    }

    fn code(result: Result<(), Error>) -> &'static str {
        match result {
            Err(Error::Client { code, .. }) => code,
            other => panic!("expected a client error, got {other:?}"),
        }
    }

    #[test]
    fn if_match_needs_the_current_version() {
        let p = preconditions(Some(r#""2", "3""#), None);
        assert!(p.check_write(Some(3)).is_ok());
        assert_eq!(code(p.check_write(Some(4))), "version-mismatch");
        assert_eq!(code(p.check_write(None)), "version-mismatch");
    }

    #[test]
    fn if_match_is_strong() {
        assert_eq!(
            code(preconditions(Some(r#"W/"3""#), None).check_write(Some(3))),
            "version-mismatch"
        );
    }

    #[test]
    fn if_match_star_needs_existence() {
        let p = preconditions(Some("*"), None);
        assert!(p.check_write(Some(0)).is_ok());
        assert_eq!(code(p.check_write(None)), "version-mismatch");
    }

    #[test]
    fn if_none_match_star_is_create_only() {
        let p = preconditions(None, Some("*"));
        assert!(p.check_write(None).is_ok());
        assert_eq!(code(p.check_write(Some(1))), "already-exists");
    }

    #[test]
    fn not_modified_compares_weakly() {
        let p = preconditions(None, Some(r#"W/"5""#));
        assert!(p.not_modified(5));
        assert!(!p.not_modified(6));
        assert!(!Preconditions::default().not_modified(5));
    }

    #[test]
    fn malformed_tags_are_rejected() {
        for value in ["3", r#""3"#, "W/3", r#""a"b""#, ","] {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MATCH, HeaderValue::from_str(value).unwrap());
            assert!(Preconditions::from_headers(&headers).is_err(), "{value}");
        }
    }

    #[test]
    fn etag_quotes_the_version() {
        assert_eq!(etag(42), HeaderValue::from_static("\"42\""));
    }
}
