-- GET /api/v1/projects/{id} with random ids in 1..BENCH_MAX_ID (a fixed seed per thread).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local max_id = tonumber(os.getenv("BENCH_MAX_ID") or "100000")

function init(args)
  math.randomseed(7919 * (tid + 1))
end

function request()
  return wrk.format("GET", "/api/v1/projects/" .. math.random(1, max_id))
end
