-- Shared by the workload scripts (each loads it with dofile; bench/run runs
-- wrk from the repository root). wrk runs a script once per thread, plus
-- once more in the main state for setup() and done().

-- Rooms r-10000 … r-19999: five digits, so wrk, oha's URL regex and pgbench
-- all draw uniformly from the same ids without zero-padding.
ROOM_FIRST = 10000
ROOM_COUNT = tonumber(os.getenv("BENCH_ROOMS") or "10000")

local token = assert(os.getenv("BENCH_TOKEN"), "BENCH_TOKEN is not set")
auth = { ["Authorization"] = "Bearer " .. token }

function random_room()
  return "r-" .. (ROOM_FIRST + math.random(0, ROOM_COUNT - 1))
end

-- Every thread's Lua state starts with the same random seed: without a
-- per-thread seed all threads would request the same sequence of rooms.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

function seed_random()
  math.randomseed(os.time() * 1000 + thread_no)
end

function init(args)
  seed_random()
end

-- One machine-readable line for bench/run; latencies in microseconds.
-- status_errors counts responses >= 400 (wrk's own definition).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d status_errors=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
