-- wrk script for the benchmark: POST pre-built RFC 8693 form bodies, cycling through a pool of
-- pre-minted subject tokens (one body per line in the file named after "--"), and print a JSON
-- summary line that bench/loadgen.py parses. No response() hook: wrk counts non-2xx itself and
-- a Lua hook per response would cost the generator more CPU than the request it measures.

local bodies = {}
local index = 0

function init(args)
  local path = args[1]
  local fh = assert(io.open(path, "r"))
  for line in fh:lines() do
    if #line > 0 then
      bodies[#bodies + 1] = wrk.format("POST", nil, {
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["Accept"] = "application/json",
      }, line)
    end
  end
  fh:close()
  index = math.random(#bodies) - 1
end

function request()
  index = index % #bodies + 1
  return bodies[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
