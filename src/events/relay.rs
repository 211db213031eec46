//! Getting durable events from the outbox into Redis exactly once and in
//! order: the sequence-guarded append, the batched deletes of published
//! rows, and the relay that appends what an inline publish missed (the
//! process died after the commit, or Redis was down) and sets aside what it
//! cannot append.

use std::time::Duration;

use tokio::sync::mpsc;

use super::replay;
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
/// Published rows buffered for deletion before they are dropped (the relay
/// then re-appends those rows, which the sequence guard turns into no-ops).
const MARKS_BUFFER: usize = 10_000;
/// Rows deleted per statement.
const MARKS_BATCH: usize = 1_000;
/// How long the first published row waits for others to share its DELETE:
/// one statement (and one commit) per batch, not per write.
const MARKS_LINGER: Duration = Duration::from_millis(50);

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
    let appendable = replay::rows(state, room, &rows).await;
    let results = append_durable(state, room, &appendable, true).await?;
    for (row, result) in rows.iter().zip(results) {
        if result >= 0 {
            state.outbox_marks.mark(room, row.seq);
        }
    }
    Ok(())
}

/// Deletes published outbox rows, in batches, off the request path.
#[derive(Clone)]
pub struct OutboxMarks {
    sender: mpsc::Sender<(String, i64)>,
}

impl OutboxMarks {
    /// Starts the flusher for `db`; it ends with the lifecycle.
    pub fn spawn(db: sqlx::PgPool, lifecycle: Lifecycle) -> Self {
        let (sender, mut receiver) = mpsc::channel::<(String, i64)>(MARKS_BUFFER);
        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    () = lifecycle.stopped() => return,
                    mark = receiver.recv() => match mark {
                        Some(mark) => mark,
                        None => return,
                    },
                };
                let (mut rooms, mut seqs) = (vec![first.0], vec![first.1]);
                let linger = tokio::time::Instant::now() + MARKS_LINGER;
                while rooms.len() < MARKS_BATCH {
                    match tokio::time::timeout_at(linger, receiver.recv()).await {
                        Ok(Some((room, seq))) => {
                            rooms.push(room);
                            seqs.push(seq);
                        }
                        _ => break,
                    }
                }
                if let Err(err) = outbox::delete_published(&db, &rooms, &seqs).await {
                    tracing::warn!(error = %err, "published outbox rows not deleted; the relay will re-check them");
                }
            }
        });
        Self { sender }
    }

    /// Queues the deletion of the room's row at `seq`; never waits.
    pub fn mark(&self, room: &str, seq: i64) {
        let _ = self.sender.try_send((room.to_owned(), seq));
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

/// Whether Redis refused the append itself (a script error, a key of the
/// wrong type), so that trying again cannot help, as opposed to an outage.
fn cannot_append(err: &redis::RedisError) -> bool {
    matches!(err.code(), Some("ERR" | "WRONGTYPE"))
}

/// Appends every unpublished outbox row old enough to have missed its inline
/// publish, in each room's sequence order, and deletes them from the outbox.
/// Returns how many rows it handled (appended or set aside).
pub async fn relay_once(state: &AppState) -> Result<usize, Error> {
    let rows = outbox::pending(&state.db, RELAY_MIN_AGE.as_millis() as i64, RELAY_BATCH).await?;
    let (mut rooms, mut seqs) = (Vec::new(), Vec::new());
    let mut quarantined = 0;
    for group in rows.chunk_by(|a, b| a.room == b.room) {
        let room = &group[0].room;
        // Forced: these rows are the oldest unpublished of their room, so a
        // gap before them can only be rows that no longer exist. A room
        // whose append fails waits for the next round; the others go on.
        let appendable = replay::rows(state, room, group).await;
        match append_durable(state, room, &appendable, true).await {
            Ok(_) => {
                rooms.extend(group.iter().map(|row| row.room.clone()));
                seqs.extend(group.iter().map(|row| row.seq));
            }
            Err(err) if cannot_append(&err) => {
                quarantined += quarantine(state, room, group, &err).await?;
            }
            Err(err) => {
                crate::metrics::relay_failed();
                tracing::warn!(error = %err, room_id = %room, rows = group.len(), "cannot relay a room's outbox events now; retrying next round");
            }
        }
    }
    if !rooms.is_empty() {
        outbox::delete_published(&state.db, &rooms, &seqs).await?;
        tracing::info!(rows = rooms.len(), "relayed outbox events to Redis");
    }
    Ok(rooms.len() + quarantined)
}

/// Sets aside rows Redis refuses to append, so they never hold up their
/// room again, and tells the room's streams to start again from a snapshot
/// (a gap at the last of them; should that fail too, the room's next event
/// finds the sequence behind it and writes the gap itself).
async fn quarantine(
    state: &AppState,
    room: &str,
    group: &[PendingRow],
    err: &redis::RedisError,
) -> Result<usize, Error> {
    let last = group.last().map_or(0, |row| row.seq);
    let moved = outbox::quarantine(&state.db, room, last, &err.to_string()).await?;
    crate::metrics::relay_quarantined(group.len());
    tracing::error!(error = %err, room_id = %room, rows = group.len(), "Redis refuses a room's outbox events; set aside in outbox_quarantine, its streams resync");
    let gap = Row {
        seq: last,
        kind: scripts::GAP,
        data: "{}".to_owned(),
    };
    if let Err(err) = append_durable(state, room, &[gap], true).await {
        tracing::warn!(error = %err, room_id = %room, "no gap written for the set-aside events");
    }
    Ok(moved as usize)
}
