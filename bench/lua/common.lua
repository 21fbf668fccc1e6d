-- Shared by every bench script (loaded with dofile): the optional auth header, a per-thread id,
-- and one machine-readable result line that bench/run.py parses.
local auth = os.getenv("BENCH_AUTH_HEADER")
if auth and auth ~= "" then
  -- "Authorization: Bearer x" (a whole header) or "Bearer x" (the Authorization value)
  local name, value = auth:match("^([%w%-]+):%s*(.+)$")
  if name then wrk.headers[name] = value else wrk.headers["Authorization"] = auth end
end

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local e = summary.errors
  local fallback = 0
  for _, t in ipairs(threads) do fallback = fallback + (tonumber(t:get("fallback")) or 0) end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%.0f,"p99_us":%.0f,' ..
    '"mean_us":%.1f,"max_us":%.0f,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d,"fallback":%d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status,
    e.timeout, fallback))
end
