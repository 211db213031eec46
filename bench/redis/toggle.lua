-- Ceiling for R3 (run by redis-benchmark with EVALSHA): the Redis work of
-- one join or one leave in ONE round trip. A random member is toggled in a
-- room that has a session: joins HSET it, leaves HDEL it; either way the
-- occupancy is counted, the session read, a presence event appended to the
-- room's capped stream and a wake-up published, as metacast's JOIN and
-- LEAVE scripts do.
-- KEYS: members hash, session hash, events stream. ARGV: member id, channel.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = 'presence.left'
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], now)
  kind = 'presence.joined'
end
local n = redis.call('HLEN', KEYS[1])
local sid = redis.call('HGET', KEYS[2], 'id') or ''
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 1000, '*', 'type', kind,
  'data', '{"connection_id":"' .. ARGV[1] .. '","session_id":"' .. sid .. '","occupancy":' .. n .. '}')
redis.call('PUBLISH', ARGV[2], 'ceiling')
return n
