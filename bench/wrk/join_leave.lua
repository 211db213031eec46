-- R3: join + leave pairs of existing connections into rooms that already
-- have an active session (a resident connection holds each one open), so
-- both requests stay on Redis: no Postgres commit.
--
-- wrk's Lua cannot tell which TCP connection a request goes out on, so
-- bench/run starts as many threads as connections: each thread then has one
-- connection, sends one request at a time, and owns one pre-created
-- metacast connection (line thread_no of $BENCH_MOVERS), alternating PUT
-- (join a random room of the first $BENCH_R3_ROOMS) and DELETE (leave it).
--
-- The answer, not the request, flips the state: wrk may build a request it
-- never sends (seen: a thread's first), and a toggle in request() would
-- then send a leave before its join.
dofile("bench/wrk/common.lua")

local conn, room
local joined = false

function init(args)
  seed_random()
  local n = 0
  local movers = assert(os.getenv("BENCH_MOVERS"), "BENCH_MOVERS is not set")
  for line in io.lines(movers) do
    n = n + 1
    if n == thread_no then conn = line end
  end
  assert(conn, "fewer movers than wrk threads")
end

local rooms = tonumber(os.getenv("BENCH_R3_ROOMS") or "32")

function request()
  local method = "DELETE"
  if not joined then
    method = "PUT"
    room = "r-" .. (ROOM_FIRST + math.random(0, rooms - 1))
  end
  return wrk.format(method, "/v1/rooms/" .. room .. "/connections/" .. conn, auth)
end

-- 201/200: joined; 204: left; anything else (counted as an error when
-- >= 400) leaves the connection out of the room, as a failed join or
-- a leave does.
function response(status, headers, body)
  joined = status == 201 or status == 200
end
