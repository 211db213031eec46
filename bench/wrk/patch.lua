-- R2: PATCH /v1/rooms/{random}/metadata, a shallow merge of one key with a
-- random value: row lock, merge, UPDATE, outbox row, commit, then the
-- post-commit publish to the room's Redis stream.
dofile("bench/wrk/common.lua")

local headers = { ["Authorization"] = auth["Authorization"], ["Content-Type"] = "application/json" }

function request()
  local body = string.format('{"hits":%d}', math.random(1, 1000000000))
  return wrk.format("PATCH", "/v1/rooms/" .. random_room() .. "/metadata", headers, body)
end
