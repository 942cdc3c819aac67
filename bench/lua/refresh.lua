-- POST /api/v1/auth/refresh, each time with the newest refresh token this connection got.
--
-- A refresh retires the token it was given, so the token is connection state. wrk gives
-- Lua no per-connection state, only per-thread state, so the harness runs this script
-- with one connection per thread (-t N -c N): a thread's variables are then its
-- connection's, and wrk sends the next request only after response() has run for the
-- previous one. args[1] is a file with one refresh token per line (line i for thread i),
-- issued by the harness before the run so that no bcrypt login lands in the measurement.
-- A thread whose chain breaks (any answer but 200, e.g. a reconnect after a timeout
-- replaying a retired token) logs in again with the form body args[2], and the
-- "relogins" counter says how often that happened.
dofile("common.lua")

COUNTERS = {"refreshed", "relogins", "status_401", "status_other"}

local token
local login_body

function init(args)
   login_body = args[2]
   local line = 0
   for value in io.lines(args[1]) do
      line = line + 1
      if line == thread_id then
         token = value
      end
   end
end

function request()
   if token == nil then
      count("relogins")
      return wrk.format("POST", "/api/v1/auth/login",
                        {["Content-Type"] = "application/x-www-form-urlencoded"}, login_body)
   end
   return wrk.format("POST", "/api/v1/auth/refresh",
                     {["Content-Type"] = "application/json"},
                     '{"refresh_token": "' .. token .. '"}')
end

function response(status, headers, body)
   if status == 200 then
      if token ~= nil then
         count("refreshed")
      end
      token = string.match(body, '"refresh_token"%s*:%s*"([^"]+)"')
   else
      if status == 401 then
         count("status_401")
      else
         count("status_other")
      end
      token = nil
   end
end
