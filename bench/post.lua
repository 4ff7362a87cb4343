-- wrk script for the bench: POST a recorded request body with a tokenbook key.
--   BENCH_BODY      file holding the JSON request body
--   BENCH_KEY       the tokenbook key (sent as Authorization: Bearer ...)
--   BENCH_HEADERS   extra "name: value" headers separated by ";" (e.g. x-bench-upstream: sse)
-- At the end it prints one line "BENCHJSON {...}" that bench/wrk.py parses.

local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "")
for pair in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^;]+") do
  local name, value = string.match(pair, "^%s*([^:]+):%s*(.-)%s*$")
  if name then wrk.headers[name] = value end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,' ..
    '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
