-- The four read endpoints in turn (list, by id, me, health): the memory phase's traffic,
-- so that every read path allocates what it allocates. args[1] = number of seeded users.
dofile("common.lua")

local max_id
local turn = 0

function init(args)
   max_id = tonumber(args[1])
   math.randomseed(thread_id)
end

function request()
   turn = turn % 4 + 1
   if turn == 1 then
      return wrk.format("GET", "/api/v1/users?page=1&per_page=10")
   elseif turn == 2 then
      return wrk.format("GET", "/api/v1/users/" .. math.random(max_id))
   elseif turn == 3 then
      return wrk.format("GET", "/api/v1/users/me")
   end
   return wrk.format("GET", "/health")
end
