-- R0: GET /healthz, no token: the HTTP server and middleware stack alone.
-- A static request (no request() function) keeps wrk's own cost minimal.
dofile("bench/wrk/common.lua")
wrk.method = "GET"
wrk.path = "/healthz"
