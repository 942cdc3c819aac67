-- Shared by every bench script (loaded with dofile; wrk runs with this folder as its cwd).
-- It keeps a handle on each thread so done() can add up the per-thread counters, and
-- prints one machine-readable line that bench/wrk.py parses instead of wrk's text report.

local threads = {}
local thread_count = 0

-- Counter names a script may bump in its thread state (see count()).
COUNTERS = {}

function setup(thread)
   thread_count = thread_count + 1
   -- A stable id per thread: seeds the random ids and picks this thread's refresh token.
   thread:set("thread_id", thread_count)
   table.insert(threads, thread)
end

-- Bump a per-thread counter; the counter must be listed in COUNTERS to be reported.
function count(name)
   _G[name] = (_G[name] or 0) + 1
end

function done(summary, latency, requests)
   local counters = {}
   for _, name in ipairs(COUNTERS) do
      local total = 0
      for _, thread in ipairs(threads) do
         total = total + (thread:get(name) or 0)
      end
      table.insert(counters, string.format('"%s": %d', name, total))
   end
   local errors = summary.errors
   -- A script may add fields of its own to the line (login.lua: latency by status).
   local extra = summary_fields and (", " .. summary_fields(threads)) or ""
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"counters": {%s}%s}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      table.concat(counters, ", "), extra))
end
