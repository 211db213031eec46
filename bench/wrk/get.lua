-- R1: GET /v1/rooms/{random}/metadata with an HS256 token: JWT check,
-- permission check, one primary-key SELECT, the ~1 KiB document back.
dofile("bench/wrk/common.lua")

function request()
  return wrk.format("GET", "/v1/rooms/" .. random_room() .. "/metadata", auth)
end
