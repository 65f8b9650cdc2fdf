-- Shared by every bench script: one machine-readable line when wrk finishes.
-- `done` runs once, in wrk's main Lua state, with the totals of all threads.
-- Latencies are in microseconds; errors.status counts responses with status >= 400.

local function pct(latency, p)
  return string.format("%.0f", latency:percentile(p))
end

function done(summary, latency, requests)
  local e = summary.errors
  local parts = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
                  e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%.0f,"p50":%s,"p90":%s,"p99":%s,"p999":%s}',
                  latency.mean, latency.stdev, latency.max,
                  pct(latency, 50), pct(latency, 90), pct(latency, 99), pct(latency, 99.9)),
  }
  io.write("WRK_JSON {" .. table.concat(parts, ",") .. "}\n")
end

-- Give each wrk thread a distinct id (used to seed its random numbers and spread its reads).
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("thread_id", next_id)
end
