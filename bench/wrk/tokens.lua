-- `make bench`'s one wrk script: GET the URL's path with `Authorization: Bearer <token>`,
-- walking the tokens of a file (one per line) round-robin over all connections; no file, or
-- an empty one, sends no Authorization header. Every variant runs this same script, so the
-- load generator's own cost is the same everywhere.
--   wrk -t1 -c16 -d10s -s bench/wrk/tokens.lua http://127.0.0.1:PORT/ -- TOKENS_FILE
-- At the end it prints one line `WRK_JSON {...}` that harness/src/bin/bench/wrk.rs parses.

local requests = {}
local next_index = 0

function init(args)
  local path = args[1]
  if path ~= nil and path ~= "" then
    for line in io.lines(path) do
      if line ~= "" then
        requests[#requests + 1] =
          wrk.format("GET", wrk.path, { ["Authorization"] = "Bearer " .. line })
      end
    end
  end
  if #requests == 0 then
    requests[1] = wrk.format("GET", wrk.path)
  end
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"min":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.min, latency.max, latency.mean))
end
