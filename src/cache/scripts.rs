//! Lua scripts: each state transition that must be atomic runs as one script
//! on the keys of a single hash tag (one Redis Cluster slot). "Now" always
//! comes from Redis `TIME`, so instances never disagree about leases.

use std::sync::LazyLock;

use redis::Script;

// Every script that appends to a room's event stream also PUBLISHes the
// room id on the events channel: a wake-up for the instances' stream hubs,
// which then read the stream itself (so a lost wake-up loses nothing).

/// Helpers prepended to every script. A wake-up names the room; one for a
/// change of the room's document (a durable `room.*` event) carries
/// [`DOCUMENT_CHANGED`] before it, so caches drop only what changed.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Appends to a history stream, trimmed by count and by age, that expires
-- once it has been idle for the retention: nothing it would drop is
-- resumable any more (a `Last-Event-ID` older than the retention gets a
-- `sync`), and a client cannot make Redis keep a history for good.
local function append(key, history, retention, kind, data)
  redis.call('XADD', key, 'MAXLEN', '~', history, '*', 'type', kind, 'data', data)
  redis.call('XTRIM', key, 'MINID', math.max(0, now_ms() - tonumber(retention)))
  redis.call('PEXPIRE', key, retention)
end
local function is_alive(key, now)
  local f = redis.call('HMGET', key, 'state', 'expires_at')
  return f[1] == 'live' and tonumber(f[2]) ~= nil and tonumber(f[2]) > now
end
"#;

/// Marks a wake-up for a changed room document (no room id starts with it):
/// `!<sequence number of the change> <room>`.
pub const DOCUMENT_CHANGED: char = '!';

/// The room and sequence number a document wake-up names, if it is one.
pub fn document_changed(payload: &str) -> Option<(&str, i64)> {
    let (seq, room) = payload.strip_prefix(DOCUMENT_CHANGED)?.split_once(' ')?;
    Some((room, seq.parse().ok()?))
}

/// The kind of the stream entry that marks events Redis lost (see
/// `APPEND_DURABLE`); a room stream answers it with a `sync`.
pub const GAP: &str = "gap";

fn script(body: &str) -> Script {
    Script::new(&format!(
        "local DOCUMENT_CHANGED, GAP = '{DOCUMENT_CHANGED}', '{GAP}'\n{PRELUDE}\n{body}"
    ))
}

/// KEYS: subject index. ARGV: connection id, quota. → 1 reserved, 0 over quota.
pub static RESERVE_QUOTA: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 0, ARGV[1])
return 1
"#,
    )
});

/// KEYS: a subject's tickets. ARGV: ticket, ttl ms, cap.
/// → {1, expires_at ms} reserved, or {0, ms until the oldest expires} at the
/// cap. Expired entries are pruned first; the set expires with its last one.
pub static RESERVE_TICKET: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) - now}
end
local expires = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]))
return {1, expires}
"#,
    )
});

/// KEYS: room closing. ARGV: +1 (a delete begins) or -1 (it is done), ttl
/// ms. Counts the deletes under way, so the first to finish does not lift
/// another's fence; gone at zero, and expiring, so a delete that dies
/// midway fences nothing for long.
pub static FENCE_ROOM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n <= 0 then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"#,
    )
});

/// KEYS: the deadlines index. ARGV: connection id, ttl ms.
/// → {now, expires_at}. A connection's first step: whatever a crash leaves
/// of the steps after it, the sweeper finds at this deadline and ends.
pub static OPEN_LEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local expires = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
return {now, expires}
"#,
    )
});

/// KEYS: connection. ARGV: owner, metadata JSON, version, ttl ms, created_at,
/// expires_at (from OPEN_LEASE). → 1 created, 0 the lease ran out first
/// (the sweeper may have passed: a record made now would never be swept).
pub static CREATE_CONNECTION: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if now_ms() >= tonumber(ARGV[6]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'live', 'owner', ARGV[1], 'metadata', ARGV[2],
  'version', ARGV[3], 'created_at', ARGV[5], 'ttl', ARGV[4], 'expires_at', ARGV[6])
return 1
"#,
    )
});

/// KEYS: connection, its open-stream count. → the streams now open, or 0
/// when the connection is gone (no count is left behind for it).
pub static STREAM_OPENED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('INCR', KEYS[2])
"#,
    )
});

/// KEYS: a connection's open-stream count. → the streams still open, or -1
/// when the count is gone because the connection ended. The count is deleted
/// at zero: a plain DECR would re-create it (at -1, forever) for a
/// connection that ended while its stream was open.
pub static STREAM_CLOSED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local open = redis.call('DECR', KEYS[1])
if open <= 0 then redis.call('DEL', KEYS[1]) end
return open
"#,
    )
});

/// KEYS: connection. → the new deadline, or nil when it is gone or expired:
/// a late heartbeat never resurrects a swept connection.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
if not is_alive(KEYS[1], now) then return false end
local expires = now + tonumber(redis.call('HGET', KEYS[1], 'ttl'))
redis.call('HSET', KEYS[1], 'expires_at', expires)
return expires
"#,
    )
});

/// KEYS: connection. ARGV: expected version, metadata JSON, new version.
/// → 1 written, 0 version moved on (retry), -1 gone.
pub static STORE_METADATA: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if not is_alive(KEYS[1], now_ms()) then return -1 end
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'metadata', ARGV[2], 'version', ARGV[3])
return 1
"#,
    )
});

/// KEYS: connection, its rooms, its events. ARGV: room, room quota, events
/// channel, the connection's topic, `1` when only `subject` may attach it
/// (`0`: an admin, who acts for every owner), subject.
/// → {status, the connection's fields, its rooms, both as they were before,
/// the attach stamp}: 1 attached, 0 already there, -1 connection gone, -2
/// over quota, -3 not the subject's (nothing changed; stamp 0).
/// Records a `membership.joined` marker for the connection's own stream.
///
/// The stamp, the value of the room in the connection's rooms, is the
/// attach time, nudged past the previous stamp so that each attach has its
/// own: a leave detaches only the attach it removed from the room (see
/// DETACH), not one a join made again meanwhile.
///
/// One round trip both loads the connection (the caller decides 404 or 403
/// from the fields, as for any connection) and attaches it when the caller
/// owns it.
pub static ATTACH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local fields = redis.call('HGETALL', KEYS[1])
local rooms = redis.call('HGETALL', KEYS[2])
local function answer(status, stamp) return {status, fields, rooms, stamp or 0} end
if not is_alive(KEYS[1], now) then return answer(-1) end
if ARGV[5] == '1' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[6] then return answer(-3) end
local previous = redis.call('HGET', KEYS[2], ARGV[1])
if previous then
  local stamp = math.max(now, tonumber(previous) + 1)
  redis.call('HSET', KEYS[2], ARGV[1], stamp)
  return answer(0, stamp)
end
if #rooms / 2 >= tonumber(ARGV[2]) then return answer(-2) end
redis.call('HSET', KEYS[2], ARGV[1], now)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100, '*', 'type', 'membership.joined', 'data', ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return answer(1, now)
"#,
    )
});

/// KEYS: the connection's rooms, its events. ARGV: room, events channel,
/// the connection's topic, the attach stamp to remove (empty: any).
/// Records `membership.left` if it was in the room. Another stamp means a
/// join attached it again after the leave took it out of the room: that
/// attach stays, or the member its join adds would be listed nowhere the
/// sweeper looks.
pub static DETACH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held or (ARGV[4] ~= '' and held ~= ARGV[4]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100, '*', 'type', 'membership.left', 'data', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#,
    )
});

// An occupant's profile (`o:<id>` its owner and `m:<id>` its metadata as
// JSON, `v:<id>` the metadata's version) is what the room's events last
// said about it: a leave describes and authorizes the occupant from it,
// without first reading the connection's keys in another slot. `s:<id>` is
// the stamp of the latest attach that joined it, which its leave detaches;
// `j:<id>` the nonce of the join that made the membership; `p:<id>` its
// `presence.joined` (without the metadata, taken from `m:<id>` when it is
// appended) while that waits for the session's `session.started`.

/// KEYS: room members, room session, room events, room profiles, room
/// departed, room occupants, room pending joins, room closing. ARGV:
/// connection id, candidate session id, presence.joined
/// payload without metadata and closing brace, owner (JSON), metadata
/// (JSON), metadata version, history length, events channel, room id,
/// attach stamp, whether the room is in the reconciler's index ('1' or '0').
/// → {joined (1), already a member (0), departed (-1), not indexed (-2) or
/// the room is being deleted (-3),
/// occupancy, session
/// id, started (1/0), joined_at, the session's started_at, durable (1: the
/// session is known to be in Postgres)}.
///
/// The candidate session id doubles as the nonce of the membership a join
/// makes (`j:<id>` in the profile), by which the starter's late
/// `presence.joined` knows its membership is still the one it made.
///
/// First in starts the session. A join's `presence.joined` goes into the
/// room's stream here, atomically, once the session's `session.started` is
/// there (`announced`); until then, the starter's included, it waits in the
/// pending list, which the append of `session.started` empties right
/// after it: no stream shows an occupant before its session.
///
/// A join that would start a session refuses (-2, changing nothing) unless
/// the caller says the room is indexed: a session must never exist where
/// the reconciler cannot find it, also when its starter dies right after.
///
/// A departed connection ended after its ATTACH, and its leave of this
/// room ran before this join: adding it now would leave a ghost.
pub static JOIN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('ZSCORE', KEYS[5], ARGV[1]) then return {-1, 0, '', 0, 0, 0, 0} end
local function session()
  local s = redis.call('HMGET', KEYS[2], 'id', 'started_at', 'durable')
  return s[1] or '', tonumber(s[2] or '0'), s[3] == '1' and 1 or 0
end
local joined_at = redis.call('HGET', KEYS[1], ARGV[1])
if joined_at then
  local stamp = redis.call('HGET', KEYS[4], 's:' .. ARGV[1])
  if stamp and tonumber(stamp) < tonumber(ARGV[10]) then
    redis.call('HSET', KEYS[4], 's:' .. ARGV[1], ARGV[10])
  end
  local sid, started, durable = session()
  return {0, redis.call('HLEN', KEYS[1]), sid, 0, tonumber(joined_at), started, durable}
end
if redis.call('EXISTS', KEYS[8]) == 1 then return {-3, 0, '', 0, 0, 0, 0} end
if ARGV[11] ~= '1' and redis.call('HEXISTS', KEYS[2], 'id') == 0 then
  return {-2, 0, '', 0, 0, 0, 0}
end
local now = now_ms()
redis.call('HSET', KEYS[1], ARGV[1], now)
redis.call('ZADD', KEYS[6], 0, ARGV[1])
redis.call('HSET', KEYS[4], 'o:' .. ARGV[1], ARGV[4], 'm:' .. ARGV[1], ARGV[5], 'v:' .. ARGV[1], ARGV[6],
  's:' .. ARGV[1], ARGV[10], 'j:' .. ARGV[1], ARGV[2])
local n = redis.call('HLEN', KEYS[1])
local sid, started, durable = session()
local function joined(occupancy)
  return ARGV[3] .. ',"metadata":' .. ARGV[5] .. ',"occupancy":' .. occupancy .. '}'
end
local function pend(occupancy)
  redis.call('RPUSH', KEYS[7], ARGV[1])
  redis.call('HSET', KEYS[4], 'p:' .. ARGV[1], ARGV[3] .. ',"occupancy":' .. occupancy)
end
if sid == '' then
  redis.call('HSET', KEYS[2], 'id', ARGV[2], 'started_at', now, 'peak', n)
  pend(n)
  return {1, n, ARGV[2], 1, now, now, 0}
end
if n > tonumber(redis.call('HGET', KEYS[2], 'peak') or '0') then
  redis.call('HSET', KEYS[2], 'peak', n)
end
if redis.call('HGET', KEYS[2], 'announced') == '1' then
  append(KEYS[3], ARGV[7], ARGV[12], 'presence.joined', joined(n))
  redis.call('PUBLISH', ARGV[8], ARGV[9])
else
  pend(n)
end
return {1, n, sid, 0, now, started, durable}
"#,
    )
});

/// KEYS: room members, room session, room events, room profiles, room
/// departed, room occupants, room pending joins. ARGV:
/// 1. connection id;
/// 2. presence.left payload without owner, metadata, reason and closing
///    brace (empty: record nothing);
/// 3. the caller's subject as JSON, to match the owner (empty: a caller
///    acting for every owner);
/// 4. the reason when the caller owns it;
/// 5. the reason when it does not but may evict (empty: it may not);
/// 6. how long (ms) to remember the connection as departed when it is not
///    a member (empty: it is not ending);
/// 7. and 8. owner and metadata (JSON) for an occupant without a profile
///    (empty: refuse it);
/// 9. history length, 10. events channel, 11. room id, 12. history
///    retention (ms).
///
/// → {1, occupancy, attach stamp (empty if the profile has none)[, ended
/// session id, peak, its started_at]} left, {0, occupancy} not a member, {-1} refused (not
/// the caller's to remove, or no profile): nothing changed.
///
/// Last out ends the session; only the caller whose HDEL removed the member
/// records `presence.left`, so it happens exactly once.
pub static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 0 then
  if ARGV[6] ~= '' then
    local now = now_ms()
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[6]))
    redis.call('ZADD', KEYS[5], now, id)
    redis.call('PEXPIRE', KEYS[5], ARGV[6])
  end
  return {0, redis.call('HLEN', KEYS[1])}
end
local profile = redis.call('HMGET', KEYS[4], 'o:' .. id, 'm:' .. id, 's:' .. id)
local owner, metadata, stamp = profile[1], profile[2], profile[3] or ''
if not owner then
  if ARGV[7] == '' then return {-1} end
  owner, metadata = ARGV[7], ARGV[8]
end
local reason = ARGV[4]
if ARGV[3] ~= '' and ARGV[3] ~= owner then
  reason = ARGV[5]
  if reason == '' then return {-1} end
end
-- Its `presence.joined` still waits for the session's start: no stream
-- has shown it, so none is told it left.
local unannounced = redis.call('HEXISTS', KEYS[4], 'p:' .. id) == 1
redis.call('HDEL', KEYS[1], id)
redis.call('ZREM', KEYS[6], id)
redis.call('HDEL', KEYS[4], 'o:' .. id, 'm:' .. id, 'v:' .. id, 's:' .. id, 'j:' .. id, 'p:' .. id)
local n = redis.call('HLEN', KEYS[1])
if ARGV[2] ~= '' and not unannounced then
  append(KEYS[3], ARGV[9], ARGV[12], 'presence.left',
    ARGV[2] .. ',"owner":' .. owner .. ',"metadata":' .. metadata
      .. ',"reason":"' .. reason .. '","occupancy":' .. n .. '}')
  redis.call('PUBLISH', ARGV[10], ARGV[11])
end
if n == 0 then
  local s = redis.call('HMGET', KEYS[2], 'id', 'peak', 'started_at')
  redis.call('DEL', KEYS[2], KEYS[7])
  if s[1] then return {1, 0, stamp, s[1], tonumber(s[2] or '0'), tonumber(s[3] or '0')} end
end
return {1, n, stamp}
"#,
    )
});

/// KEYS: room session, room members. → {session id ('' if none),
/// started_at ms, its age ms on Redis' clock, occupancy}.
pub static ROOM_SESSION: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local s = redis.call('HMGET', KEYS[1], 'id', 'started_at')
local started = tonumber(s[2] or '0')
return {s[1] or '', started, now_ms() - started, redis.call('HLEN', KEYS[2])}
"#,
    )
});

/// KEYS: room session. ARGV: session id. Marks the session recorded in
/// Postgres, if it is still the room's.
pub static MARK_SESSION_DURABLE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'durable', '1')
end
return 1
"#,
    )
});

/// KEYS: the active-sessions index. ARGV: room, the ended session's
/// started_at. Takes the room out of the index only if its entry is the
/// ended session's: a join may have started and indexed a newer one since.
pub static UNINDEX_SESSION: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
"#,
    )
});

/// KEYS: room occupants, room members, room profiles. ARGV: the id to page
/// after (empty: from the start), how many, and '1' to leave out occupants
/// whose `presence.joined` waits for the session's start (a snapshot
/// shows only what its stream will also say).
/// → how many ids it looked at, the last of them ('' if none), then a flat
/// list of id, joined_at
/// (ms), owner (JSON), metadata (JSON) for the occupants among them, in id
/// order: one round trip per page, whatever the room holds.
pub static OCCUPANTS_PAGE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local min = '-'
if ARGV[1] ~= '' then min = '(' .. ARGV[1] end
local ids = redis.call('ZRANGE', KEYS[1], min, '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {tostring(#ids), ids[#ids] or ''}
for _, id in ipairs(ids) do
  local joined_at = redis.call('HGET', KEYS[2], id)
  local profile = redis.call('HMGET', KEYS[3], 'o:' .. id, 'm:' .. id, 'p:' .. id)
  if joined_at and profile[1] and not (ARGV[3] == '1' and profile[3]) then
    out[#out + 1] = id
    out[#out + 1] = joined_at
    out[#out + 1] = profile[1]
    out[#out + 1] = profile[2] or '{}'
  end
end
return out
"#,
    )
});

/// KEYS: room events, room profiles. ARGV: history length,
/// connection.metadata.updated payload without metadata and closing brace,
/// metadata (JSON), its version, connection id, events channel, room id,
/// history retention (ms). Records the change in the room and in its
/// profile of the occupant (unless a later version is already there);
/// nothing if the connection is no longer an occupant (it left after the
/// write read its rooms).
pub static OCCUPANT_METADATA: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local held = redis.call('HGET', KEYS[2], 'v:' .. ARGV[5])
if not held then return 0 end
local newer = tonumber(held) < tonumber(ARGV[4])
if redis.call('HEXISTS', KEYS[2], 'p:' .. ARGV[5]) == 1 then
  -- Its presence.joined waits for the session's start and will carry this.
  if newer then redis.call('HSET', KEYS[2], 'm:' .. ARGV[5], ARGV[3], 'v:' .. ARGV[5], ARGV[4]) end
  return 1
end
append(KEYS[1], ARGV[1], ARGV[8], 'connection.metadata.updated',
  ARGV[2] .. ',"metadata":' .. ARGV[3] .. '}')
redis.call('PUBLISH', ARGV[6], ARGV[7])
if newer then
  redis.call('HSET', KEYS[2], 'm:' .. ARGV[5], ARGV[3], 'v:' .. ARGV[5], ARGV[4])
end
return 1
"#,
    )
});

/// KEYS: deadlines. ARGV: batch size, retry ms. → expired connection ids,
/// each re-scored to now + retry: claimed by this sweeper, and retried by any
/// sweeper should this one die before finishing.
pub static CLAIM_EXPIRED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
end
return ids
"#,
    )
});

/// KEYS: connection, its rooms. ARGV: force (1: end it even if its lease runs).
/// → {'alive', expires_at} or {'dead', owner, rooms…}. Marks the connection
/// dead first, so no join or heartbeat can revive it meanwhile.
pub static BEGIN_REAP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'state', 'expires_at', 'owner')
if ARGV[1] == '0' and f[1] == 'live' and tonumber(f[2]) > now then
  return {'alive', f[2]}
end
if f[1] == 'live' then redis.call('HSET', KEYS[1], 'state', 'dead') end
local out = {'dead', f[3] or ''}
for _, room in ipairs(redis.call('HKEYS', KEYS[2])) do table.insert(out, room) end
return out
"#,
    )
});

/// KEYS: a topic's events. ARGV: history length, type, data, events
/// channel, topic, history retention (ms). Appends an ephemeral event and
/// wakes the instances; one script, since on a Redis Cluster the channel
/// name hashes to another slot than the stream, and a pipeline cannot span
/// slots.
pub static APPEND_EPHEMERAL: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
append(KEYS[1], ARGV[1], ARGV[6], ARGV[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#,
    )
});

/// KEYS: room events, the room's published-sequence key, room session,
/// room profiles, room pending joins. ARGV: history length, events
/// channel, room id, force (1: accept a gap), history retention (ms), then
/// (sequence, type, data) for each durable event in sequence order.
/// → per event: 1 appended, 0 already there, -1 held back (an earlier one
/// is missing; the relay appends them in order).
///
/// A forced append past a recorded sequence means Redis lost events it
/// had (Postgres numbers a room's events without holes): a `gap` entry goes
/// first, which every reader of the stream answers with a `sync`. A `gap`
/// row (the relay's, for events it set aside) is appended with no second
/// gap before it.
///
/// This is what keeps the inline publish and the outbox relay from
/// duplicating or reordering a room's durable events. With no sequence
/// recorded, only a room's first event (1) is known to have nothing before
/// it: after Redis restarted empty, earlier events may still wait in the
/// outbox, and appending a later one first would make the relay drop them
/// as "already there".
///
/// Appending the `session.started` of the room's current session marks it
/// announced and appends, right after it, the `presence.joined` of every
/// join that waited for it and is still a member (see `JOIN`).
///
/// After `room.deleted`, the room's sequence expires with the retention, as
/// its history does once idle: nothing of a deleted room stays in Redis for
/// good. A durable event of a room created again keeps the sequence.
pub static APPEND_DURABLE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
-- No payload can fail the script halfway (its appends would stay, without
-- the sequence that records them).
local function session_of(data)
  local ok, decoded = pcall(cjson.decode, data)
  return ok and type(decoded) == 'table' and decoded.session_id or nil
end
local last = redis.call('GET', KEYS[2])
last = last and tonumber(last)
local out = {}
local appended, deleted, document = false, false, false
for i = 6, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if last and seq <= last then
    table.insert(out, 0)
  elseif seq > (last or 0) + 1 and ARGV[4] ~= '1' then
    table.insert(out, -1)
  else
    if last and seq > last + 1 and ARGV[i + 1] ~= GAP then
      -- Events before this one reached Redis and are gone from it (a
      -- failover rolled the stream and the sequence back): whoever reads
      -- past here is told to start again from a snapshot.
      append(KEYS[1], ARGV[1], ARGV[5], GAP, '{}')
    end
    append(KEYS[1], ARGV[1], ARGV[5], ARGV[i + 1], ARGV[i + 2])
    if ARGV[i + 1] == 'session.started'
      and redis.call('HGET', KEYS[3], 'id') == session_of(ARGV[i + 2]) then
      redis.call('HSET', KEYS[3], 'announced', '1')
      for _, id in ipairs(redis.call('LRANGE', KEYS[5], 0, -1)) do
        local held = redis.call('HMGET', KEYS[4], 'p:' .. id, 'm:' .. id)
        if held[1] then
          local data = held[1] .. ',"metadata":' .. (held[2] or '{}') .. '}'
          append(KEYS[1], ARGV[1], ARGV[5], 'presence.joined', data)
          redis.call('HDEL', KEYS[4], 'p:' .. id)
        end
      end
      redis.call('DEL', KEYS[5])
    end
    last = seq
    appended = true
    -- A gap may stand for changes of the document too.
    document = document or string.sub(ARGV[i + 1], 1, 5) == 'room.' or ARGV[i + 1] == GAP
    deleted = ARGV[i + 1] == 'room.deleted'
    table.insert(out, 1)
  end
end
if appended then
  redis.call('SET', KEYS[2], last)
  -- A live room's sequence stays (SET clears an expiry): without it, the
  -- next event would wait for earlier ones the outbox may no longer hold.
  if deleted then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
  redis.call('PUBLISH', ARGV[2], (document and DOCUMENT_CHANGED .. last .. ' ' or '') .. ARGV[3])
end
return out
"#,
    )
});
