//! `GET /v1/rooms`: the rooms a caller may read, by id, optionally narrowed
//! by id prefix and a jsonpath `where` on the metadata.
//!
//! Readability is decided first, from the token alone (see
//! [`RoomRanges`]): a token that reads nothing gets an empty page without a
//! query, and a filter only ever runs on documents its caller may read, so
//! neither its errors nor its cost depend on anyone else's rooms. What a
//! filter may cost is bounded by its shape, a statement timeout and a few
//! slots per instance.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::pagination::{Page, decode_cursor, encode_cursor, page_limit};
use super::rooms::RoomOut;
use crate::auth::{Action, AuthUser, IdRange, RoomRanges};
use crate::db::rooms::{self as db, ListQuery};
use crate::error::{Error, ProblemDetails};
use crate::extract::Query;
use crate::ids::{ROOM_ID_MAX_LEN, RoomId, is_room_id_tail_byte};
use crate::state::AppState;

const MAX_WHERE_BYTES: usize = 4096;
/// `.**` walks every value of a document; nested, the walk multiplies.
const MAX_RECURSIVE_WILDCARDS: usize = 1;
const MAX_LIKE_REGEX: usize = 4;
/// Statement timeout of a filtered listing: far below the request timeout,
/// so a filter holds its pooled connection briefly.
const WHERE_TIMEOUT: &str = "500ms";

/// Filters and paging for `GET /v1/rooms`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only rooms whose id starts with this (a possible start of a room id).
    #[param(pattern = r"^([A-Za-z0-9][A-Za-z0-9._:@-]{0,127})?$")]
    prefix: Option<String>,
    /// A Postgres jsonpath predicate on the metadata, e.g.
    /// `$.type == "public" && $.members < $.max`. At most 4096 bytes, one
    /// `.**` and four `like_regex`; evaluated for at most 500 ms.
    #[serde(rename = "where")]
    #[param(rename = "where")]
    filter: Option<String>,
    /// Page size, 1–500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List the rooms the caller may `read`.
///
/// Ordered by id; filter by `prefix` and by a jsonpath `where` predicate
/// evaluated on the metadata of readable rooms only.
#[utoipa::path(
    get, path = "/v1/rooms", tag = "rooms", operation_id = "rooms.list",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of rooms", body = Page<RoomOut>),
        (status = 400, description = "Bad limit, cursor, prefix or where expression", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "Postgres or Redis unreachable, or too many filtered listings running (`filters-busy`)", body = ProblemDetails, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn list_rooms(
    user: AuthUser,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Page<RoomOut>>, Error> {
    let limit = page_limit(params.limit)?;
    let after = params.cursor.as_deref().map(room_cursor).transpose()?;
    let prefix = params.prefix.as_deref().map(id_prefix).transpose()?;
    let filter = params.filter.as_deref();
    if let Some(filter) = filter {
        check_where_shape(filter)?;
    }
    let mut ranges = RoomRanges::allowed(&user.permissions, Action::Read);
    if let Some(prefix) = prefix {
        ranges = ranges.within(&IdRange::prefix(prefix));
    }
    if let Some(after) = &after {
        ranges = ranges.after(after);
    }
    if ranges.is_empty() {
        return Ok(Json(Page {
            items: Vec::new(),
            next_cursor: None,
        }));
    }
    let query = ListQuery {
        ranges: &ranges,
        filter,
        // One extra row tells whether another page follows.
        limit: limit as i64 + 1,
    };
    let mut rows = match filter {
        None => {
            let mut conn = state.db.acquire().await?;
            db::list(&mut conn, &query).await?
        }
        Some(filter) => {
            let _slot = state.bounds.filter_slot().await?;
            let mut tx = crate::db::begin(&state.db).await?;
            sqlx::query("select set_config('statement_timeout', $1, true)")
                .bind(WHERE_TIMEOUT)
                .execute(&mut *tx)
                .await?;
            // A syntax error is answered the same whatever rooms exist.
            sqlx::query("select $1::text::jsonpath")
                .bind(filter)
                .execute(&mut *tx)
                .await
                .map_err(where_error)?;
            let rows = db::list(&mut tx, &query).await.map_err(where_error)?;
            tx.commit().await?;
            rows
        }
    };
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|row| encode_cursor(&row.id))
    } else {
        None
    };
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(RoomOut::load(&state, row).await?);
    }
    Ok(Json(Page { items, next_cursor }))
}

fn room_cursor(cursor: &str) -> Result<String, Error> {
    let id = decode_cursor(cursor)?;
    match RoomId::parse(&id) {
        Ok(_) => Ok(id),
        Err(_) => Err(Error::bad_request(
            "invalid-cursor",
            "cursor is not one this server issued",
        )),
    }
}

/// A prefix that could start a room id; anything else could match nothing
/// and is more likely a client's mistake.
fn id_prefix(prefix: &str) -> Result<&str, Error> {
    let bytes = prefix.as_bytes();
    let valid = match bytes.split_first() {
        None => true,
        Some((first, rest)) => {
            bytes.len() <= ROOM_ID_MAX_LEN
                && first.is_ascii_alphanumeric()
                && rest.iter().all(|&b| is_room_id_tail_byte(b))
        }
    };
    if valid {
        Ok(prefix)
    } else {
        Err(Error::bad_request(
            "invalid-prefix",
            "prefix must be the start of a room id: a letter or digit, then letters, digits or . _ : @ -, at most 128 in all",
        ))
    }
}

/// Limits on what a filter may ask of Postgres, checked before it gets
/// there. String literals are skipped, so `"**"` inside one is just text.
fn check_where_shape(filter: &str) -> Result<(), Error> {
    let invalid = |detail: String| Err(Error::bad_request("invalid-where", detail));
    if filter.len() > MAX_WHERE_BYTES {
        return invalid(format!("where is limited to {MAX_WHERE_BYTES} bytes"));
    }
    if filter.contains('\0') {
        return invalid("where must not contain NUL characters".into());
    }
    let code = outside_strings(filter);
    if code.matches("**").count() > MAX_RECURSIVE_WILDCARDS {
        return invalid(format!(
            "where may use `.**` at most {MAX_RECURSIVE_WILDCARDS} time(s)"
        ));
    }
    if code.matches("like_regex").count() > MAX_LIKE_REGEX {
        return invalid(format!(
            "where may use like_regex at most {MAX_LIKE_REGEX} times"
        ));
    }
    Ok(())
}

/// The filter with the content of its double-quoted strings removed.
fn outside_strings(filter: &str) -> String {
    let mut code = String::with_capacity(filter.len());
    let mut chars = filter.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            code.push(c);
            continue;
        }
        // Inside a string: skip to its closing quote, honouring escapes.
        code.push(' ');
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
    }
    code
}

/// A filter Postgres refused is the client's mistake: syntax (class 42),
/// data exceptions (22), unsupported comparisons (0A), program limits (54),
/// memory (53200) and our statement timeout (57014) become 400s. The query
/// only touched documents the caller may read, so saying so leaks nothing.
fn where_error(err: sqlx::Error) -> Error {
    if let sqlx::Error::Database(db) = &err {
        let code = db.code().unwrap_or_default();
        if code == "57014" {
            return Error::bad_request(
                "invalid-where",
                format!("the where expression took longer than {WHERE_TIMEOUT}"),
            );
        }
        if ["42", "22", "0A", "54"]
            .iter()
            .any(|class| code.starts_with(class))
            || code == "53200"
        {
            return Error::bad_request(
                "invalid-where",
                format!("invalid jsonpath in where: {}", db.message()),
            );
        }
    }
    err.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<(), Error>) -> Option<&'static str> {
        match result {
            Ok(()) => None,
            Err(Error::Client { code, .. }) => Some(code),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn where_shapes_are_bounded_outside_string_literals() {
        for ok in [
            r#"$.type == "public""#,
            r#"$.** ? (@ == 1)"#,
            r#"$.s == "** ** like_regex like_regex like_regex like_regex like_regex""#,
            r#"$.s == "a\"**" && $.** == 2"#,
        ] {
            assert_eq!(code(check_where_shape(ok)), None, "{ok}");
        }
        for bad in [
            "$.** ? (@.** == 1)",
            "$.n == \"\0\"",
            &"$.s like_regex \"a\" || ".repeat(5),
            &"$.n == 1 && ".repeat(500),
        ] {
            assert_eq!(code(check_where_shape(bad)), Some("invalid-where"), "{bad}");
        }
    }

    #[test]
    fn prefixes_must_start_a_room_id() {
        for ok in ["", "a", "team-", "Team:4.x@y_z"] {
            assert!(id_prefix(ok).is_ok(), "{ok:?}");
        }
        for bad in ["\0", "a b", "-x", "é", &"a".repeat(129)] {
            assert!(id_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
