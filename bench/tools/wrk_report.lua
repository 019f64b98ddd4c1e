-- wrk script: prints one machine-readable line at the end (latency in microseconds),
-- so the runner does not parse wrk's human text. Optional env: WRK_PATH, WRK_HOST, WRK_CLOSE=1.
local path = os.getenv("WRK_PATH")
local host = os.getenv("WRK_HOST")
if path then wrk.path = path end
if host then wrk.headers["Host"] = host end
if os.getenv("WRK_CLOSE") == "1" then wrk.headers["Connection"] = "close" end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "GMBENCH requests=%d duration_us=%d bytes=%d p50=%d p90=%d p99=%d p999=%d max=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
