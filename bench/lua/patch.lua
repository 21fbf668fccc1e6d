-- PATCH /api/v1/projects/{id} with a true If-Match per request.
-- BENCH_PATCH_FILE lists "id version" lines (the versions current when the run starts); each
-- thread takes every n-th id, never has two requests on one id in flight, and learns each id's
-- new version from the response's ETag. A 412 would also teach the current version. Should every
-- id of a thread be in flight at once, the request falls back to If-Match: * (counted as
-- "fallback" in the result line; expected 0).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "2")
local run = os.getenv("BENCH_RUN") or "x"
local ids, versions, inflight = {}, {}, {}
local pos, n = 0, 0
fallback = 0

function init(args)
  local i = 0
  for line in io.lines(os.getenv("BENCH_PATCH_FILE")) do
    local id, version = line:match("^(%d+) (%d+)")
    if id and i % nthreads == tid then
      id = tonumber(id)
      table.insert(ids, id)
      versions[id] = tonumber(version)
    end
    i = i + 1
  end
  wrk.headers["Content-Type"] = "application/json"
end

-- wrk.format replaces wrk.headers (auth, Content-Type) when given headers: merge them in.
local function with_if_match(tag)
  local h = {}
  for k, v in pairs(wrk.headers) do h[k] = v end
  h["If-Match"] = tag
  return h
end

function request()
  n = n + 1
  local body = string.format('{"name":"压测修改 %s-%d-%d"}', run, tid, n)
  for _ = 1, #ids do
    pos = pos % #ids + 1
    local id = ids[pos]
    if not inflight[id] then
      inflight[id] = true
      return wrk.format("PATCH", "/api/v1/projects/" .. id,
        with_if_match('"' .. versions[id] .. '"'), body)
    end
  end
  fallback = fallback + 1
  return wrk.format("PATCH", "/api/v1/projects/" .. ids[1], with_if_match("*"), body)
end

function response(status, headers, body)
  local id = tonumber(body:match('^{"id":(%d+)') or body:match('/projects/(%d+)"') or "")
  if not id then return end
  inflight[id] = nil
  local etag = headers["etag"] or headers["ETag"] or headers["Etag"]
  local version = etag and tonumber(etag:match("(%d+)"))
  if version then versions[id] = version end
end
