-- POST /api/v1/auth/login (OAuth2 form) as seeded users drawn from 1..args[1], who all
-- share the password args[2] (form-encoded by the harness). Counts answers by status so
-- the harness can report the share refused with 503 (hash queue full).
dofile("common.lua")

COUNTERS = {"status_200", "status_503", "status_other"}

local max_user
local password

function init(args)
   max_user = tonumber(args[1])
   password = args[2]
   math.randomseed(thread_id)
end

function request()
   -- Seeded emails are user<N>@bench.example; user 1 is the admin.
   local body = "username=user" .. math.random(max_user) .. "%40bench.example&password="
      .. password
   return wrk.format("POST", "/api/v1/auth/login",
                     {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end

function response(status, headers, body)
   if status == 200 then
      count("status_200")
   elseif status == 503 then
      count("status_503")
   else
      count("status_other")
   end
end
