-- wrk script of bench/run.py: POST JSON bodies over keep-alive connections.
--   wrk ... -s bench/wrk_post.lua URL -- BODY_FILE MODE TOKENS_FILE NTHREADS NONCE
-- MODE "fixed": the same body on every request (prepared once).
-- MODE "vary":  BODY_FILE is a template; every "@@V@@" in it becomes a 12-digit number unique to
--               this request (its count on this thread, the thread, NONCE), so no body repeats
--               within a run or between runs with different NONCEs.
-- MODE "mix":   BODY_FILE lists "WEIGHT PATH TEMPLATE_FILE" lines; requests go to each PATH in
--               turn, WEIGHT times per round, each with its template varied as in "vary".
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

local body, prepared
local templates = {}  -- {path = ..., parts = ...} in the order requests cycle through them
local tokens, next_token = {}, 1
local counter = 0
local nonce = 0

function init(args)
  local data = read_file(args[1])
  local mode = args[2]
  local tokens_file = args[3]
  local nthreads = tonumber(args[4]) or 1
  nonce = (tonumber(args[5]) or 0) % 1000
  if mode == "vary" then
    table.insert(templates, {path = nil, parts = split(data, "@@V@@")})
  elseif mode == "mix" then
    for line in string.gmatch(data, "[^\n]+") do
      local weight, path, file = string.match(line, "^(%d+) (%S+) (%S+)$")
      local parts = split(read_file(file), "@@V@@")
      for _ = 1, tonumber(weight) do
        table.insert(templates, {path = path, parts = parts})
      end
    end
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
  local b, path = body, nil
  if #templates > 0 then
    local t = templates[((counter - 1) % #templates) + 1]
    -- the count's digits reversed: the ones digit leads, so measured values (which carry the
    -- number after their own digits) differ between consecutive requests within a double's precision
    b = table.concat(t.parts, string.reverse(string.format("%07d", counter % 10000000)) ..
                     string.format("%02d%03d", tid, nonce))
    path = t.path
  end
  if #tokens > 0 then
    -- past the end the tokens are replayed and refused (401): counted as status errors
    headers["Authorization"] = "Bearer " .. tokens[((next_token - 1) % #tokens) + 1]
    next_token = next_token + 1
  end
  return wrk.format("POST", path, headers, b)
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
