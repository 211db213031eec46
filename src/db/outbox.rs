//! The transactional outbox: an event row written in the same transaction as
//! the change it describes.

use sqlx::PgConnection;

use crate::events::Event;

/// Records `event` in the current transaction.
#[tracing::instrument(skip_all, fields(event = event.kind))]
pub async fn record(conn: &mut PgConnection, event: &Event) -> sqlx::Result<()> {
    sqlx::query("insert into outbox (room, event_type, payload) values ($1, $2, $3)")
        .bind(&event.room)
        .bind(event.kind)
        .bind(sqlx::types::Json(&event.data))
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes rows older than the event history's retention.
#[tracing::instrument(skip_all)]
pub async fn prune(conn: &mut PgConnection, retention_secs: i64) -> sqlx::Result<u64> {
    let done =
        sqlx::query("delete from outbox where created_at < now() - make_interval(secs => $1)")
            .bind(retention_secs as f64)
            .execute(conn)
            .await?;
    Ok(done.rows_affected())
}
