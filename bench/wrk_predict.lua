-- wrk script for bench/throughput.py: POST one short sentence per request to
-- /models/<name>/predict (the URL given to wrk), every body distinct within the run, so a
-- response cache can never hit. Arguments after `--`: the phase's base number (a 10-digit
-- integer; thread t sends base + t * 10^7 + counter, so the text's token count never changes),
-- optionally the body as a format with one %d (a peer server's own request format; with no %d,
-- every request is the same body), and optionally a Cache-Control value to send.
-- At the end it prints one line "MGBENCH {json}" that throughput.py parses.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  base = tonumber(args[1]) or 1000000000
  body_format = args[2] or '{"inputs":"The quick brown fox jumps over the lazy dog %d"}'
  headers = {["Content-Type"] = "application/json"}
  if args[3] and args[3] ~= "" then headers["Cache-Control"] = args[3] end
  counter = 0
  codes = {}
end

function request()
  counter = counter + 1
  local n = base + tid * 10000000 + counter
  local body = string.format(body_format, n)
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  if status ~= 200 then
    local key = tostring(status)
    codes[key] = (codes[key] or 0) + 1
  end
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("codes") or {}) do
      merged[code] = (merged[code] or 0) + count
    end
  end
  local parts = {}
  for code, count in pairs(merged) do
    table.insert(parts, string.format('"%s":%d', code, count))
  end
  local e = summary.errors
  io.write(string.format(
    'MGBENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"codes":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")))
end
