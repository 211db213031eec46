//! Getting durable events from the outbox into Redis exactly once and in
//! order: the sequence-guarded append, the batched "published" marks, and
//! the relay that appends what an inline publish missed (the process died
//! after the commit, or Redis was down).

use std::time::Duration;

use tokio::sync::mpsc;

use crate::cache::scripts;
use crate::db::outbox::{self, PendingRow};
use crate::error::Error;
use crate::lifecycle::Lifecycle;
use crate::state::AppState;

/// How often the relay looks for unpublished rows.
const RELAY_INTERVAL: Duration = Duration::from_secs(1);
/// Rows younger than this are left to their inline publish.
const RELAY_MIN_AGE: Duration = Duration::from_secs(2);
/// Rows relayed per round.
const RELAY_BATCH: i64 = 500;
/// Published marks buffered before they are dropped (the relay then
/// re-appends those rows, which the sequence guard turns into no-ops).
const MARKS_BUFFER: usize = 10_000;
/// Marks written per UPDATE.
const MARKS_BATCH: usize = 1_000;

/// One durable event to append.
pub struct Row<'a> {
    pub seq: i64,
    pub kind: &'a str,
    pub data: String,
}

/// Appends a room's durable events through the sequence guard; returns the
/// guard's verdict per row (1 appended, 0 already there, -1 held back).
pub async fn append_durable(
    state: &AppState,
    room: &str,
    rows: &[Row<'_>],
    force: bool,
) -> redis::RedisResult<Vec<i64>> {
    let keys = &state.redis_keys;
    let mut invocation = scripts::APPEND_DURABLE.key(keys.room_events(room));
    invocation
        .key(keys.room_published_seq(room))
        .key(keys.room_session(room))
        .key(keys.room_profiles(room))
        .key(keys.room_pending_joins(room))
        .arg(state.settings.presence.event_history)
        .arg(keys.events_channel())
        .arg(room)
        .arg(if force { "1" } else { "0" })
        .arg(state.settings.presence.retention_ms());
    for row in rows {
        invocation.arg(row.seq).arg(row.kind).arg(&row.data);
    }
    let mut redis = state.redis.clone();
    invocation.invoke_async(&mut redis).await
}

/// Appends the room's unpublished durable events up to `seq` now, in order:
/// what an inline publish does when the sequence guard held its event back
/// because an earlier one is not in Redis yet (that one's publish is late,
/// or Redis restarted empty and forgot what it had). Waiting for the relay
/// instead would let the caller's ephemeral events that follow (the
/// `presence.joined` after `session.started`) overtake it.
///
/// Forced, like the relay: the room lock orders sequence numbers by commit,
/// so every row before `seq` is committed and a gap before the oldest
/// unpublished row can only be rows that no longer exist in Redis.
pub async fn catch_up(state: &AppState, room: &str, seq: i64) -> Result<(), Error> {
    let rows = outbox::pending_in_room(&state.db, room, seq).await?;
    let results = append_durable(state, room, &appendable(&rows), true).await?;
    for (row, result) in rows.iter().zip(results) {
        if result >= 0 {
            state.outbox_marks.mark(row.id);
        }
    }
    Ok(())
}

/// Marks outbox rows published, in batches, off the request path.
#[derive(Clone)]
pub struct OutboxMarks {
    sender: mpsc::Sender<i64>,
}

impl OutboxMarks {
    /// Starts the flusher for `db`; it ends with the lifecycle.
    pub fn spawn(db: sqlx::PgPool, lifecycle: Lifecycle) -> Self {
        let (sender, mut receiver) = mpsc::channel::<i64>(MARKS_BUFFER);
        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    () = lifecycle.stopped() => return,
                    id = receiver.recv() => match id {
                        Some(id) => id,
                        None => return,
                    },
                };
                let mut ids = vec![first];
                while ids.len() < MARKS_BATCH {
                    match receiver.try_recv() {
                        Ok(id) => ids.push(id),
                        Err(_) => break,
                    }
                }
                if let Err(err) = outbox::mark_published(&db, &ids).await {
                    tracing::warn!(error = %err, "outbox marks lost; the relay will re-check those rows");
                }
            }
        });
        Self { sender }
    }

    /// Queues a mark; never waits.
    pub fn mark(&self, id: i64) {
        let _ = self.sender.try_send(id);
    }
}

/// Runs the relay until the instance stops. Every instance runs one; the
/// sequence guard makes concurrent relays harmless.
pub fn spawn(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELAY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = state.lifecycle.stopped() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = relay_once(&state).await {
                tracing::debug!(error = %err, "outbox relay round failed; retrying");
            }
        }
    });
}

/// Outbox rows as the append script takes them.
fn appendable(rows: &[PendingRow]) -> Vec<Row<'_>> {
    rows.iter()
        .map(|row| Row {
            seq: row.seq,
            kind: &row.event_type,
            data: row.payload.clone(),
        })
        .collect()
}

/// Appends every unpublished outbox row old enough to have missed its inline
/// publish, in each room's sequence order, and marks them published.
/// Returns how many rows it handled.
pub async fn relay_once(state: &AppState) -> Result<usize, Error> {
    let rows = outbox::pending(&state.db, RELAY_MIN_AGE.as_millis() as i64, RELAY_BATCH).await?;
    let mut handled = Vec::with_capacity(rows.len());
    for group in rows.chunk_by(|a, b| a.room == b.room) {
        let room = &group[0].room;
        // Forced: these rows are the oldest unpublished of their room, so a
        // gap before them can only be rows that no longer exist. A room
        // whose append fails waits for the next round; the others go on.
        match append_durable(state, room, &appendable(group), true).await {
            Ok(_) => handled.extend(group.iter().map(|row| row.id)),
            Err(err) => {
                crate::metrics::relay_failed();
                tracing::error!(error = %err, room_id = %room, rows = group.len(), "cannot relay a room's outbox events; retrying next round");
            }
        }
    }
    if !handled.is_empty() {
        outbox::mark_published(&state.db, &handled).await?;
        tracing::info!(rows = handled.len(), "relayed outbox events to Redis");
    }
    Ok(handled.len())
}
