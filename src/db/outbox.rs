//! The transactional outbox: an event row written in the same transaction as
//! the change it describes, numbered per room.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgExecutor};

use crate::events::Event;

/// Records `event` in the current transaction with the room's next
/// sequence number; fills in the event's `outbox` position. A room
/// metadata write records its event in its own UPDATE statement instead
/// ([`crate::db::rooms::store_metadata`]): the same columns, kept alike.
#[tracing::instrument(skip_all, fields(event = event.kind))]
pub async fn record(conn: &mut PgConnection, event: &mut Event) -> sqlx::Result<()> {
    // One round trip: the room's next sequence number (its row is already
    // locked by the change) and the row that carries it.
    let (id, seq): (i64, i64) = sqlx::query_as(
        "with next as (
             update rooms set event_seq = event_seq + 1 where id = $1 returning event_seq
         )
         insert into outbox (room, seq, event_type, payload)
         select $1, event_seq, $2, $3 from next
         returning id, seq",
    )
    .bind(&event.room)
    .bind(event.kind)
    .bind(Json(&event.data))
    .fetch_one(conn)
    .await?;
    event.outbox = Some((id, seq));
    Ok(())
}

/// An outbox row not yet known to be in Redis. Its payload is the text
/// Postgres holds, passed on to Redis undecoded: no payload, however deep a
/// client made it, can fail the relay.
#[derive(Debug, Clone, FromRow)]
pub struct PendingRow {
    pub id: i64,
    pub room: String,
    pub seq: i64,
    pub event_type: String,
    pub payload: String,
    pub created_at: DateTime<Utc>,
}

/// Every unpublished row, in sequence order, of each room that has one
/// older than `min_age_ms`. A room's rows go from its lowest unpublished
/// one: a transaction that started earlier can commit a later sequence
/// number, and relaying that alone would make its predecessor look
/// already there.
pub async fn pending(
    executor: impl PgExecutor<'_>,
    min_age_ms: i64,
    limit: i64,
) -> sqlx::Result<Vec<PendingRow>> {
    sqlx::query_as(
        "select id, room, seq, event_type, payload::text as payload, created_at from outbox
         where published_at is null and room in (
             select room from outbox
             where published_at is null and created_at < now() - make_interval(secs => $1 / 1000.0)
         )
         order by room, seq
         limit $2",
    )
    .bind(min_age_ms as f64)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// The room's unpublished rows up to sequence `seq`, in sequence order.
pub async fn pending_in_room(
    executor: impl PgExecutor<'_>,
    room: &str,
    seq: i64,
) -> sqlx::Result<Vec<PendingRow>> {
    sqlx::query_as(
        "select id, room, seq, event_type, payload::text as payload, created_at from outbox
         where room = $1 and seq <= $2 and published_at is null
         order by seq",
    )
    .bind(room)
    .bind(seq)
    .fetch_all(executor)
    .await
}

/// How many rows wait for publication (a metric).
pub async fn backlog(executor: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("select count(*) from outbox where published_at is null")
        .fetch_one(executor)
        .await
}

/// Marks rows as being in Redis.
pub async fn mark_published(executor: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query(
        "update outbox set published_at = now() where id = any($1) and published_at is null",
    )
    .bind(ids)
    .execute(executor)
    .await?;
    Ok(())
}

/// Deletes published rows older than the event history's retention. An
/// unpublished row stays, however old, until the relay has appended it: a
/// room's stream never loses an event to pruning.
#[tracing::instrument(skip_all)]
pub async fn prune(conn: &mut PgConnection, retention_secs: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "delete from outbox
         where published_at is not null and created_at < now() - make_interval(secs => $1)",
    )
    .bind(retention_secs as f64)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
