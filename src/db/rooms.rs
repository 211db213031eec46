//! Queries on `rooms`. Every function takes an executor; handlers own the
//! transactions.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgExecutor};

use crate::auth::RoomRanges;

/// A room as stored, tombstones included.
#[derive(Debug, Clone, FromRow)]
pub struct RoomRow {
    pub id: String,
    pub metadata: Json<Value>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl RoomRow {
    /// Whether the room exists (is not a tombstone).
    pub fn is_live(&self) -> bool {
        self.deleted_at.is_none()
    }
}

/// A live room, or `None`.
#[tracing::instrument(skip_all, fields(room_id = id))]
pub async fn find(executor: impl PgExecutor<'_>, id: &str) -> sqlx::Result<Option<RoomRow>> {
    sqlx::query_as(
        "select id, metadata, version, created_at, updated_at, deleted_at
         from rooms where id = $1 and deleted_at is null",
    )
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// A live room's version, document as Postgres prints it, event sequence
/// number and row version (`xmin`), or `None`: what a metadata GET sends,
/// without parsing the document into a `Value` only to print it again.
#[tracing::instrument(skip_all, fields(room_id = id))]
pub async fn find_document(
    executor: impl PgExecutor<'_>,
    id: &str,
) -> sqlx::Result<Option<(i64, String, i64, i64)>> {
    sqlx::query_as(
        "select version, metadata::text, event_seq, xmin::text::bigint
         from rooms where id = $1 and deleted_at is null",
    )
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// Locks the room's row (live or tombstone) for the rest of the transaction.
#[tracing::instrument(skip_all, fields(room_id = id))]
pub async fn lock(conn: &mut PgConnection, id: &str) -> sqlx::Result<Option<RoomRow>> {
    sqlx::query_as(
        "select id, metadata, version, created_at, updated_at, deleted_at
         from rooms where id = $1 for update",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Locks the room's row without reading its document: what a change to
/// one of its sessions takes first, in the order every session transition
/// takes its locks (room, then session), so the two never deadlock.
pub async fn lock_row(conn: &mut PgConnection, id: &str) -> sqlx::Result<()> {
    sqlx::query("select 1 from rooms where id = $1 for update")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks the room's row, first inserting a tombstone at version 0 if there is
/// none. Concurrent creators wait on the unique key instead of failing, and
/// the tombstone disappears with the transaction unless a write revives it.
#[tracing::instrument(skip_all, fields(room_id = id))]
pub async fn lock_or_insert(conn: &mut PgConnection, id: &str) -> sqlx::Result<RoomRow> {
    sqlx::query(
        "insert into rooms (id, metadata, version, deleted_at)
         values ($1, '{}', 0, now())
         on conflict (id) do nothing",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    lock(conn, id).await?.ok_or(sqlx::Error::RowNotFound)
}

/// Stores `metadata` as the next version and records its event (`kind`,
/// `payload`) in the outbox with the room's next sequence number, in one
/// statement, provided the row is still as the caller read it: at
/// `read_version`, and live or a tombstone as `read_live` says, and, for a
/// copy that may be stale (the document cache's), still the row version
/// `read_row` (an `xmin`: no change of the row, announced or not, goes
/// unseen). Returns the event's sequence number and the new row version,
/// or `None` when the row moved on (another write, a deletion): then
/// nothing was written. A revived tombstone gets a fresh `created_at`.
///
/// One statement, one new row version of the room and the outbox row. The
/// statement is atomic on its own, so a caller holding no lock can use it
/// as a compare-and-set; [`super::metadata_batch`] runs many in one.
#[tracing::instrument(skip_all, fields(room_id = id, read_version))]
pub async fn store_metadata(
    executor: impl PgExecutor<'_>,
    id: &str,
    metadata: &serde_json::value::RawValue,
    (read_version, read_live, read_row): (i64, bool, Option<i64>),
    (kind, payload): (&str, &(impl serde::Serialize + Sync)),
) -> sqlx::Result<Option<(i64, i64)>> {
    sqlx::query_as(
        "with stored as (
             update rooms
             set metadata = $2, version = $3 + 1, deleted_at = null,
                 event_seq = event_seq + 1,
                 created_at = case when deleted_at is null then created_at else now() end
             where id = $1 and version = $3 and (deleted_at is null) = $4
               and ($7::bigint is null or xmin::text::bigint = $7)
             returning event_seq, xmin::text::bigint as row
         ), recorded as (
             insert into outbox (room, seq, event_type, payload)
             select $1, event_seq, $5, $6 from stored
         )
         select event_seq, row from stored",
    )
    .bind(id)
    .bind(Json(metadata))
    .bind(read_version)
    .bind(read_live)
    .bind(kind)
    .bind(Json(payload))
    .bind(read_row)
    .fetch_optional(executor)
    .await
}

/// Turns a live room into a tombstone: its document goes, its version stays.
#[tracing::instrument(skip_all, fields(room_id = id))]
pub async fn tombstone(conn: &mut PgConnection, id: &str) -> sqlx::Result<()> {
    sqlx::query("update rooms set metadata = '{}', deleted_at = now() where id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Filters of a room listing.
#[derive(Debug, Clone)]
pub struct ListQuery<'a> {
    /// The ids to look at: readable, within the prefix, after the cursor.
    pub ranges: &'a RoomRanges,
    /// A Postgres jsonpath predicate over the metadata.
    pub filter: Option<&'a str>,
    pub limit: i64,
}

/// Above every room id (they are ASCII up to `z`): the top of an unbounded
/// range.
const ABOVE_ALL_IDS: &str = "\u{7f}";

/// Live rooms matching `query`, in id order.
///
/// Each range is its own primary-key scan, and the filter sits inside a
/// `case` on the range test: a jsonpath never runs on a document outside
/// the ranges, whatever order the planner picks for the conditions.
#[tracing::instrument(skip_all)]
pub async fn list(conn: &mut PgConnection, query: &ListQuery<'_>) -> sqlx::Result<Vec<RoomRow>> {
    let (lo, hi): (Vec<&str>, Vec<&str>) = query
        .ranges
        .ranges()
        .iter()
        .map(|range| {
            (
                range.lo.as_str(),
                range.hi.as_deref().unwrap_or(ABOVE_ALL_IDS),
            )
        })
        .unzip();
    sqlx::query_as(
        "select r.id, r.metadata, r.version, r.created_at, r.updated_at, r.deleted_at
         from unnest($1::text[], $2::text[]) as g(lo, hi)
         cross join lateral (
             select id, metadata, version, created_at, updated_at, deleted_at
             from rooms
             where id >= g.lo and id < g.hi and deleted_at is null
               and case when id >= g.lo and id < g.hi and deleted_at is null
                        then $3::text is null or metadata @@ $3::text::jsonpath
                        else false end
             order by id
             limit $4
         ) as r
         order by r.id
         limit $4",
    )
    .bind(lo)
    .bind(hi)
    .bind(query.filter)
    .bind(query.limit)
    .fetch_all(conn)
    .await
}

/// Locks a room for a session transition. With `create`, a missing or
/// deleted room is (re)created with `{}` (a new room at version 0; a revived
/// one continues its version counter); without, `None` unless it is live.
#[tracing::instrument(skip_all, fields(room_id = id))]
pub async fn lock_for_session(
    conn: &mut PgConnection,
    id: &str,
    create: bool,
) -> sqlx::Result<Option<RoomRow>> {
    if create {
        sqlx::query(
            "insert into rooms (id) values ($1)
             on conflict (id) do update
             set deleted_at = null, metadata = '{}', version = rooms.version + 1, created_at = now()
             where rooms.deleted_at is not null",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(lock(conn, id).await?.filter(RoomRow::is_live))
}
