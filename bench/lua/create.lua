-- POST /api/v1/projects: a new project per request, in a random chain of park 1.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local chains = tonumber(os.getenv("BENCH_CHAINS") or "7")
local run = os.getenv("BENCH_RUN") or "x"
local n = 0

function init(args)
  math.randomseed(104729 * (tid + 1))
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  n = n + 1
  local body = string.format(
    '{"park_id":1,"chain_id":%d,"name":"压测新建项目 %s-%d-%d","stage":"planning",' ..
    '"is_key":false,"year":2026}', math.random(1, chains), run, tid, n)
  return wrk.format("POST", "/api/v1/projects", nil, body)
end
