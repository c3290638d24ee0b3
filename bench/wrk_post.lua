-- wrk script of bench/run.py: POST a JSON body over keep-alive connections.
--   wrk ... -s bench/wrk_post.lua URL -- BODY_FILE MODE TOKENS_FILE NTHREADS NONCE
-- MODE "fixed": the same body on every request (prepared once).
-- MODE "vary":  BODY_FILE is a template; every "@@V@@" in it becomes a value unique to this
--               request (NONCE, thread, counter), so every request carries a different record.
-- TOKENS_FILE (or "-"): one JWT per line; thread i sends lines i, i+N, ... each exactly once.
-- done() prints one line "BENCH_RESULT {json}" with the figures bench/run.py reads.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local function split(text, sep)
  local parts, start = {}, 1
  while true do
    local i, j = string.find(text, sep, start, true)
    if not i then
      table.insert(parts, string.sub(text, start))
      return parts
    end
    table.insert(parts, string.sub(text, start, i - 1))
    start = j + 1
  end
end

local parts, body, prepared
local tokens, next_token = {}, 1
local counter = 0
local nonce = "r"

function init(args)
  local data = read_file(args[1])
  local mode = args[2]
  local tokens_file = args[3]
  local nthreads = tonumber(args[4]) or 1
  nonce = args[5] or "r"
  if mode == "vary" then
    parts = split(data, "@@V@@")
  else
    body = data
  end
  if tokens_file and tokens_file ~= "-" then
    local i = 0
    for line in io.lines(tokens_file) do
      if (i % nthreads) + 1 == tid and #line > 0 then
        table.insert(tokens, line)
      end
      i = i + 1
    end
  end
  if body and #tokens == 0 then
    prepared = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
  end
end

function request()
  if prepared then
    return prepared
  end
  counter = counter + 1
  local headers = {["Content-Type"] = "application/json"}
  local b = body
  if parts then
    b = table.concat(parts, nonce .. "t" .. tid .. "n" .. counter)
  end
  if #tokens > 0 then
    -- past the end the tokens are replayed and refused (401): counted as status errors
    headers["Authorization"] = "Bearer " .. tokens[((next_token - 1) % #tokens) + 1]
    next_token = next_token + 1
  end
  return wrk.format("POST", nil, headers, b)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
