-- POST /api/v1/auth/login (OAuth2 form) as seeded users drawn from 1..args[1], who all
-- share the password args[2] (form-encoded by the harness). Counts answers by status so
-- the harness can report the share refused with 503 (hash queue full), and times the
-- logins admitted (200) apart from those refused (503): wrk's own latency mixes them.
-- The timing needs one connection per thread (the harness runs it -tN -cN): a thread's
-- request and response then alternate, so the time of its last request is its answer's.
dofile("common.lua")

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
   return tonumber(clock.tv_sec) * 1e6 + tonumber(clock.tv_nsec) / 1e3
end

COUNTERS = {"status_200", "status_503", "status_other"}
TIMED_STATUSES = {"200", "503"}

local max_user
local password
local sent_at
-- A refused login waits the Retry-After it was given before the next one, as a client
-- that follows the answer does. wrk's default, the next request at once, is a flood no
-- client sends but an attacker (whom the per-address rate limits meet): on this 2-core
-- machine, where wrk shares the cores with the app, it kept the event loop busy answering
-- 503s and starved the low-priority hash thread, so that no login was admitted at all.
local wait_ms = 0

function init(args)
   max_user = tonumber(args[1])
   password = args[2]
   math.randomseed(thread_id)
   -- Globals, one flat list a status, so that done() reads them from each thread.
   latencies_200 = {}
   latencies_503 = {}
end

function request()
   -- Seeded emails are user<N>@bench.example; user 1 is the admin.
   local body = "username=user" .. math.random(max_user) .. "%40bench.example&password="
      .. password
   sent_at = now_us()
   return wrk.format("POST", "/api/v1/auth/login",
                     {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end

function delay()
   local ms = wait_ms
   wait_ms = 0
   return ms
end

function response(status, headers, body)
   if status == 503 then
      local retry_after = headers["retry-after"] or headers["Retry-After"]
      wait_ms = (tonumber(retry_after) or 1) * 1000
   end
   local timed = _G["latencies_" .. status]
   if timed and sent_at then
      table.insert(timed, now_us() - sent_at)
   end
   if status == 200 then
      count("status_200")
   elseif status == 503 then
      count("status_503")
   else
      count("status_other")
   end
end

local function percentile(sorted, share)
   if #sorted == 0 then
      return 0
   end
   return sorted[math.max(1, math.ceil(share * #sorted))]
end

function summary_fields(threads)
   local parts = {}
   for _, status in ipairs(TIMED_STATUSES) do
      local all = {}
      for _, thread in ipairs(threads) do
         for _, us in ipairs(thread:get("latencies_" .. status) or {}) do
            table.insert(all, us)
         end
      end
      table.sort(all)
      table.insert(parts, string.format(
         '"%s": {"count": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}', status, #all,
         percentile(all, 0.50), percentile(all, 0.99), percentile(all, 1.0)))
   end
   return '"latency_by_status": {' .. table.concat(parts, ", ") .. '}'
end
