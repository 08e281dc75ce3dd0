-- One wrk script for every scenario of scripts/load.sh, driven by env vars:
--   WRK_PATH      path template, "{id}" replaced by the target id
--   WRK_MODE      fixed    : always WRK_LO
--                 spread   : uniform random id in [WRK_LO, WRK_HI]
--                 uncached : a new (viewer, target) pair every request, viewers
--                            from WRK_TOKENS (one token per line, viewer i = line i),
--                            targets from WRK_LO up; WRK_THREADS must be wrk's -t
--                 batch    : POST {"users": [...]} of WRK_BATCH random ids in [WRK_LO, WRK_HI]
--                 feed     : batch as a random viewer of WRK_TOKENS each request
--   WRK_TOKEN     bearer token (fixed, spread and batch)
-- done() prints one machine-readable line:
--   RESULT <req/s> <p50 µs> <p99 µs> <non-2xx> <errors> <p99.9 µs>
local path = os.getenv("WRK_PATH") or "/"
local mode = os.getenv("WRK_MODE") or "fixed"
local lo = tonumber(os.getenv("WRK_LO") or "2")
local hi = tonumber(os.getenv("WRK_HI") or "2")
local token = os.getenv("WRK_TOKEN")
local batch = tonumber(os.getenv("WRK_BATCH") or "50")
local tokens = {}
local counter = 0
local threads = {}

function setup(thread)
  thread:set("thread_no", #threads)
  table.insert(threads, thread)
end

function init(args)
  thread_no = thread_no or 0
  math.randomseed(os.time() + thread_no * 7919)
  if mode == "uncached" or mode == "feed" then
    for line in io.lines(os.getenv("WRK_TOKENS")) do
      table.insert(tokens, line)
    end
  end
end

function request()
  local id, bearer
  if mode == "spread" then
    id = math.random(lo, hi)
    bearer = token
  elseif mode == "uncached" then
    -- Each thread owns the viewers v with v % threads == thread_no; the
    -- viewer changes every request and the target every round of viewers,
    -- so no (viewer, target) pair repeats within a run.
    local nthreads = tonumber(os.getenv("WRK_THREADS") or "1")
    local per_thread = math.floor(#tokens / nthreads)
    local v = thread_no + nthreads * (counter % per_thread)
    id = lo + math.floor(counter / per_thread)
    if id > hi then id = lo + (id - lo) % (hi - lo + 1) end
    bearer = tokens[v + 1]
    counter = counter + 1
  else
    id = lo
    bearer = token
  end
  local headers = {}
  if mode == "batch" or mode == "feed" then
    local ids = {}
    for i = 1, batch do ids[i] = tostring(math.random(lo, hi)) end
    if mode == "feed" then
      headers["Authorization"] = "Bearer " .. tokens[math.random(1, #tokens)]
    else
      headers["Authorization"] = "Bearer " .. token
    end
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", path, headers, '{"users":[' .. table.concat(ids, ",") .. ']}')
  end
  if bearer then headers["Authorization"] = "Bearer " .. bearer end
  return wrk.format("GET", (path:gsub("{id}", tostring(id))), headers)
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT %.0f %d %d %d %d %d\n",
    summary.requests / seconds, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout, latency:percentile(99.9)))
end
