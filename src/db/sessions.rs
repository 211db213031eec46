//! Queries on `sessions`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

/// The selected columns, as a macro so queries stay `&'static str`.
macro_rules! columns {
    () => {
        "id, room, started_at, ended_at, peak_occupancy, metadata, version, final_metadata"
    };
}

/// A session as stored.
#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub id: Uuid,
    pub room: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub peak_occupancy: i32,
    pub metadata: Json<Value>,
    pub version: i64,
    pub final_metadata: Option<Json<Value>>,
}

/// The room's open session, if any.
pub async fn active(executor: impl PgExecutor<'_>, room: &str) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from sessions where room = $1 and ended_at is null"
    ))
    .bind(room)
    .fetch_optional(executor)
    .await
}

/// The room's open session, locked for a metadata write.
pub async fn lock_active(conn: &mut PgConnection, room: &str) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from sessions where room = $1 and ended_at is null for update"
    ))
    .bind(room)
    .fetch_optional(conn)
    .await
}

/// One session by id.
pub async fn get(executor: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from sessions where id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// Inserts a new open session; false when it was already recorded (a
/// reconciler and the starter may both try).
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    room: &str,
    started_at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "insert into sessions (id, room, started_at) values ($1, $2, $3)
         on conflict (id) do nothing",
    )
    .bind(id)
    .bind(room)
    .bind(started_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a session that Redis ended before its start reached Postgres,
/// as already ended; nothing when it is recorded already.
pub async fn insert_ended(
    conn: &mut PgConnection,
    id: Uuid,
    room: &str,
    started_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into sessions (id, room, started_at, ended_at, final_metadata)
         values ($1, $2, $3, greatest(now(), $3), '{}')
         on conflict (id) do nothing",
    )
    .bind(id)
    .bind(room)
    .bind(started_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends an open session: archives its metadata and clears the live copy.
/// Returns the ended row, or `None` when it was already ended (then only
/// its peak is raised, so a late end still records the right peak).
pub async fn end(
    conn: &mut PgConnection,
    id: Uuid,
    peak_occupancy: i32,
) -> sqlx::Result<Option<SessionRow>> {
    let ended: Option<SessionRow> = sqlx::query_as(concat!(
        "update sessions
         set ended_at = now(), peak_occupancy = greatest(peak_occupancy, $2),
             final_metadata = metadata, metadata = '{}'
         where id = $1 and ended_at is null
         returning ",
        columns!()
    ))
    .bind(id)
    .bind(peak_occupancy)
    .fetch_optional(&mut *conn)
    .await?;
    if ended.is_none() {
        sqlx::query(
            "update sessions set peak_occupancy = greatest(peak_occupancy, $2) where id = $1",
        )
        .bind(id)
        .bind(peak_occupancy)
        .execute(conn)
        .await?;
    }
    Ok(ended)
}

/// Ends every open session of `room` except `keep`: a start that reaches
/// Postgres before the previous session's end closes it instead of failing.
pub async fn end_others(
    conn: &mut PgConnection,
    room: &str,
    keep: Option<Uuid>,
) -> sqlx::Result<Vec<SessionRow>> {
    sqlx::query_as(concat!(
        "update sessions
         set ended_at = now(), final_metadata = metadata, metadata = '{}'
         where room = $1 and ended_at is null and ($2::uuid is null or id <> $2)
         returning ",
        columns!()
    ))
    .bind(room)
    .bind(keep)
    .fetch_all(conn)
    .await
}

/// Stores new live metadata of an open session.
pub async fn store_metadata(
    conn: &mut PgConnection,
    id: Uuid,
    metadata: &Value,
    version: i64,
) -> sqlx::Result<SessionRow> {
    sqlx::query_as(concat!(
        "update sessions set metadata = $2, version = $3 where id = $1 returning ",
        columns!()
    ))
    .bind(id)
    .bind(Json(metadata))
    .bind(version)
    .fetch_one(conn)
    .await
}

/// Sessions of a room, newest first, after the `(started_at, id)` cursor.
pub async fn history(
    executor: impl PgExecutor<'_>,
    room: &str,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<SessionRow>> {
    let (at, id) = after.unzip();
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from sessions
         where room = $1 and ($2::timestamptz is null or (started_at, id) < ($2, $3))
         order by started_at desc, id desc
         limit $4"
    ))
    .bind(room)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Every open session: the reconciler compares them with Redis.
pub async fn all_active(executor: impl PgExecutor<'_>) -> sqlx::Result<Vec<(Uuid, String)>> {
    sqlx::query_as("select id, room from sessions where ended_at is null")
        .fetch_all(executor)
        .await
}
