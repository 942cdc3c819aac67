-- GET /api/v1/users/{id} with ids drawn uniformly from 1..args[1] (the seeded users).
dofile("common.lua")

local max_id

function init(args)
   max_id = tonumber(args[1])
   math.randomseed(thread_id)
end

function request()
   return wrk.format("GET", "/api/v1/users/" .. math.random(max_id))
end
