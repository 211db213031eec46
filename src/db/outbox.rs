//! The transactional outbox: an event row written in the same transaction as
//! the change it describes, numbered per room, and deleted once the event is
//! known to be in the room's Redis stream.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgExecutor};

use crate::events::{Event, EventKind};

/// Records `event` in the current transaction with the room's next
/// sequence number; fills in the event's `outbox` sequence. A room
/// metadata write records its event in its own UPDATE statement instead
/// ([`crate::db::rooms::store_metadata`]).
#[tracing::instrument(skip_all, fields(event = event.kind.as_str()))]
pub async fn record(conn: &mut PgConnection, event: &mut Event) -> sqlx::Result<()> {
    // One round trip: the room's next sequence number (its row is already
    // locked by the change) and the row that carries it.
    let seq: i64 = sqlx::query_scalar(
        "with next as (
             update rooms set event_seq = event_seq + 1 where id = $1 returning event_seq
         )
         insert into outbox (room, seq, event_type, payload)
         select $1, event_seq, $2, $3 from next
         returning seq",
    )
    .bind(&event.room)
    .bind(event.kind.as_str())
    .bind(Json(event.outbox_payload()))
    .fetch_one(conn)
    .await?;
    event.outbox = Some(seq);
    Ok(())
}

/// Puts the whole of `event` (the document too) back into its row: what a
/// writer does when the event did not reach Redis, for the document before
/// it, which the relay would otherwise rebuild it from, may not survive
/// the outage ([`crate::events::replay`]).
pub async fn keep_whole(executor: impl PgExecutor<'_>, event: &Event) -> sqlx::Result<()> {
    sqlx::query("update outbox set payload = $3 where room = $1 and seq = $2")
        .bind(&event.room)
        .bind(event.outbox)
        .bind(Json(&event.data))
        .execute(executor)
        .await?;
    Ok(())
}

/// An outbox row not yet known to be in Redis. Its payload is the text
/// Postgres holds, passed on to Redis undecoded: no payload, however deep a
/// client made it, can fail the relay.
#[derive(Debug, Clone, FromRow)]
pub struct PendingRow {
    pub room: String,
    pub seq: i64,
    pub event_type: String,
    pub payload: String,
    /// For a `room.metadata.updated`, whose row leaves its document out
    /// ([`Event::outbox_payload`]): the room's document, while the room is
    /// still at the event's version (so this is the very document the event
    /// announced: a live room's version counts every change of it).
    pub document: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Pending rows, with the document of each that left it out while the
/// room still holds it. `$1`: the event type that leaves it out.
macro_rules! pending_rows {
    ($where:literal $(, $limit:literal)?) => {
        concat!(
            "select o.room, o.seq, o.event_type, o.payload::text as payload,
                    case when o.event_type = $1 and not o.payload ? 'metadata'
                              and r.deleted_at is null
                              and o.payload->'version' = to_jsonb(r.version)
                         then r.metadata::text end as document,
                    o.created_at
             from outbox o left join rooms r on r.id = o.room ",
            $where,
            " order by o.room, o.seq"
            $(, " limit ", $limit)?
        )
    };
}

/// Every pending row, in sequence order, of each room that has one older
/// than `min_age_ms`. A room's rows go from its lowest pending one: a
/// transaction that started earlier can commit a later sequence number, and
/// relaying that alone would make its predecessor look already there.
pub async fn pending(
    executor: impl PgExecutor<'_>,
    min_age_ms: i64,
    limit: i64,
) -> sqlx::Result<Vec<PendingRow>> {
    sqlx::query_as(pending_rows!(
        "where o.room in (
             select room from outbox
             where created_at < now() - make_interval(secs => $2 / 1000.0)
         )",
        "$3"
    ))
    .bind(EventKind::RoomMetadataUpdated.as_str())
    .bind(min_age_ms as f64)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// The room's pending rows up to sequence `seq`, in sequence order.
pub async fn pending_in_room(
    executor: impl PgExecutor<'_>,
    room: &str,
    seq: i64,
) -> sqlx::Result<Vec<PendingRow>> {
    sqlx::query_as(pending_rows!("where o.room = $2 and o.seq <= $3"))
        .bind(EventKind::RoomMetadataUpdated.as_str())
        .bind(room)
        .bind(seq)
        .fetch_all(executor)
        .await
}

/// How many rows wait for publication (a metric).
pub async fn backlog(executor: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(executor)
        .await
}

/// Forgets rows whose events are in Redis, given as parallel lists.
pub async fn delete_published(
    executor: impl PgExecutor<'_>,
    rooms: &[String],
    seqs: &[i64],
) -> sqlx::Result<()> {
    sqlx::query(
        "delete from outbox o using unnest($1::text[], $2::bigint[]) as p(room, seq)
         where o.room = p.room and o.seq = p.seq",
    )
    .bind(rooms)
    .bind(seqs)
    .execute(executor)
    .await?;
    Ok(())
}

/// Moves the room's rows up to `seq` out of the outbox into
/// `outbox_quarantine` with `error`; returns how many moved.
pub async fn quarantine(
    executor: impl PgExecutor<'_>,
    room: &str,
    seq: i64,
    error: &str,
) -> sqlx::Result<u64> {
    let moved = sqlx::query(
        "with moved as (
             delete from outbox where room = $1 and seq <= $2
             returning room, seq, event_type, payload, created_at
         )
         insert into outbox_quarantine (room, seq, event_type, payload, created_at, error)
         select room, seq, event_type, payload, created_at, $3 from moved
         on conflict (room, seq) do nothing",
    )
    .bind(room)
    .bind(seq)
    .bind(error)
    .execute(executor)
    .await?;
    Ok(moved.rows_affected())
}
