//! Room metadata compare-and-sets, many in one statement: writes to rooms
//! that arrive while a batch is in Postgres go together in the next one, so
//! under load a PATCH costs a share of one statement, one commit and one
//! round trip instead of each of its own (group commit). Each batch is
//! exactly [`super::rooms::store_metadata`] per row: a row that moved on
//! stores nothing, and its writer reads Postgres and tries again.
//!
//! A lane keeps its connection while writes keep coming and hands it back
//! once none has come for [`LINGER`]: sqlx pings a connection each time it
//! goes back to the pool, a round trip and a query for Postgres, which with
//! one or two writes per batch cost about as much as the batch. Each lane
//! takes the rooms that hash to it, so two lanes never wait for each
//! other's row locks.
//!
//! A lane's connection plans the batch statement once: left to choose,
//! Postgres plans it again at every execution (a plan for the arrays at
//! hand always looks cheaper than one for any arrays), which cost it about
//! as much CPU as running it. The plan for any arrays is the one it picks
//! anyway (a nested loop over the primary key).

use std::hash::BuildHasher;
use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};
use tokio::sync::{mpsc, oneshot};

use crate::lifecycle::Lifecycle;

/// Writes one statement carries at most.
const BATCH: usize = 64;
/// Bytes of documents and events one statement carries at most: a larger
/// write runs on its own connection, so a large document never holds up the
/// small writes queued behind it.
const BATCH_BYTES: usize = 12 * 1024;
/// How long an idle lane keeps its connection.
const LINGER: Duration = Duration::from_millis(50);
/// Writes waiting for a lane before callers wait to queue.
const QUEUE: usize = 1024;

/// One compare-and-set: what [`super::rooms::store_metadata`] takes.
pub struct StoreMetadata {
    pub room: String,
    pub metadata: Box<RawValue>,
    pub read_version: i64,
    /// The cached row version (`xmin`) the write started from, if any.
    pub read_row: Option<i64>,
    pub kind: &'static str,
    pub payload: Box<RawValue>,
}

/// The event's sequence number and the new row version, or `None` when the
/// row moved on.
pub type Stored = Option<(i64, i64)>;

struct Queued {
    write: StoreMetadata,
    reply: oneshot::Sender<sqlx::Result<Stored>>,
}

#[derive(Clone)]
pub struct MetadataBatches {
    lanes: Vec<mpsc::Sender<Queued>>,
    hasher: std::hash::RandomState,
    pool: PgPool,
}

impl MetadataBatches {
    /// Starts `lanes` lanes on `pool`; they end with the lifecycle.
    pub fn spawn(pool: PgPool, lanes: usize, lifecycle: Lifecycle) -> Self {
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(QUEUE);
                tokio::spawn(run_lane(pool.clone(), receiver, lifecycle.clone()));
                sender
            })
            .collect();
        Self {
            lanes,
            hasher: std::hash::RandomState::new(),
            pool,
        }
    }

    /// Runs `write` in the next batch of its room's lane. A write too large
    /// to share a batch runs on its own connection instead, so a large
    /// document never holds up the small writes behind it in a lane.
    pub async fn store(&self, write: StoreMetadata) -> sqlx::Result<Stored> {
        if write.bytes() > BATCH_BYTES {
            return store_one(&self.pool, &write).await;
        }
        let lane = (self.hasher.hash_one(&write.room) % self.lanes.len() as u64) as usize;
        let (reply, answer) = oneshot::channel();
        let closed = || sqlx::Error::PoolClosed;
        self.lanes[lane]
            .send(Queued { write, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

impl StoreMetadata {
    /// What this write adds to a batch's statement.
    fn bytes(&self) -> usize {
        self.metadata.get().len() + self.payload.get().len() + self.room.len()
    }
}

async fn run_lane(pool: PgPool, mut receiver: mpsc::Receiver<Queued>, lifecycle: Lifecycle) {
    let mut conn: Option<PoolConnection<Postgres>> = None;
    // A write taken from the queue that did not fit the last batch.
    let mut carried: Option<Queued> = None;
    loop {
        if carried.is_none()
            && let Some(held) = conn.take()
        {
            match tokio::time::timeout(LINGER, receiver.recv()).await {
                Ok(Some(queued)) => {
                    carried = Some(queued);
                    conn = Some(held);
                }
                Ok(None) => return close(held),
                Err(_) => release(held).await,
            }
        }
        let first = match carried.take() {
            Some(queued) => queued,
            None => tokio::select! {
                () = lifecycle.stopped() => return conn.map_or((), close),
                queued = receiver.recv() => match queued {
                    Some(queued) => queued,
                    None => return conn.map_or((), close),
                },
            },
        };
        let mut bytes = first.write.bytes();
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(queued) if bytes + queued.write.bytes() > BATCH_BYTES => {
                    carried = Some(queued);
                    break;
                }
                Ok(queued) => {
                    bytes += queued.write.bytes();
                    batch.push(queued);
                }
                Err(_) => break,
            }
        }
        let result = match &mut conn {
            Some(conn) => store_all(conn, &batch).await,
            None => match acquire(&pool).await {
                Ok(fresh) => store_all(conn.insert(fresh), &batch).await,
                Err(err) => Err(err),
            },
        };
        match result {
            Ok(stored) => {
                for (queued, stored) in batch.into_iter().zip(stored) {
                    let _ = queued.reply.send(Ok(stored));
                }
            }
            Err(err) => {
                // The connection may be broken: the next batch takes a
                // fresh one. Each write of this batch runs on its own, so
                // whatever failed it (a lost connection, a deadlock with
                // a session transition) fails only its own request.
                tracing::debug!(error = %err, rows = batch.len(), "metadata batch failed; writing its rows one by one");
                if let Some(mut conn) = conn.take() {
                    conn.close_on_drop();
                }
                for queued in batch {
                    let stored = store_one(&pool, &queued.write).await;
                    let _ = queued.reply.send(stored);
                }
            }
        }
    }
}

/// A connection for a lane, set to plan each statement once.
async fn acquire(pool: &PgPool) -> sqlx::Result<PoolConnection<Postgres>> {
    let mut conn = pool.acquire().await?;
    if let Err(err) = sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
    {
        close(conn);
        return Err(err);
    }
    Ok(conn)
}

/// Hands a lane's connection back to the pool as the pool gave it.
async fn release(mut conn: PoolConnection<Postgres>) {
    if sqlx::query("reset plan_cache_mode")
        .execute(&mut *conn)
        .await
        .is_err()
    {
        close(conn);
    }
}

/// Closes a lane's connection instead of handing it back with the lane's
/// setting.
fn close(mut conn: PoolConnection<Postgres>) {
    conn.close_on_drop();
}

async fn store_one(pool: &PgPool, write: &StoreMetadata) -> sqlx::Result<Stored> {
    super::rooms::store_metadata(
        pool,
        &write.room,
        &write.metadata,
        (write.read_version, true, write.read_row),
        (write.kind, &write.payload),
    )
    .await
}

/// One statement for the whole batch; per write, in order, what it stored.
/// Two writes to one room in a batch: Postgres updates the row once, from
/// one of them, and the other stores nothing (it moved on).
async fn store_all(conn: &mut PgConnection, batch: &[Queued]) -> sqlx::Result<Vec<Stored>> {
    let writes = batch.iter().map(|queued| &queued.write);
    let ord: Vec<i32> = (0..batch.len() as i32).collect();
    let rooms: Vec<&str> = writes.clone().map(|w| w.room.as_str()).collect();
    let documents: Vec<Json<&RawValue>> = writes.clone().map(|w| Json(&*w.metadata)).collect();
    let versions: Vec<i64> = writes.clone().map(|w| w.read_version).collect();
    let rows: Vec<Option<i64>> = writes.clone().map(|w| w.read_row).collect();
    let kinds: Vec<&str> = writes.clone().map(|w| w.kind).collect();
    let payloads: Vec<Json<&RawValue>> = writes.map(|w| Json(&*w.payload)).collect();
    let stored: Vec<(i32, i64, i64)> = sqlx::query_as(
        "with input as (
             select * from unnest($1::int[], $2::text[], $3::jsonb[], $4::bigint[], $5::bigint[],
                                  $6::text[], $7::jsonb[])
                 as i(ord, id, metadata, read_version, read_row, kind, payload)
         ), stored as (
             update rooms r
             set metadata = i.metadata, version = i.read_version + 1,
                 event_seq = r.event_seq + 1
             from input i
             where r.id = i.id and r.version = i.read_version and r.deleted_at is null
               and (i.read_row is null or r.xmin::text::bigint = i.read_row)
             returning i.ord, i.id, i.kind, i.payload, r.event_seq, r.xmin::text::bigint as row
         ), recorded as (
             insert into outbox (room, seq, event_type, payload)
             select id, event_seq, kind, payload from stored
         )
         select ord, event_seq, row from stored",
    )
    .bind(ord)
    .bind(rooms)
    .bind(documents)
    .bind(versions)
    .bind(rows)
    .bind(kinds)
    .bind(payloads)
    .fetch_all(conn)
    .await?;
    let mut results = vec![None; batch.len()];
    for (ord, seq, row) in stored {
        results[ord as usize] = Some((seq, row));
    }
    Ok(results)
}
