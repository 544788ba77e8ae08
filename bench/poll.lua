-- wrk script for the poll bench: each request polls one of the task ids
-- p0 .. p<N-1> at random (N from RAPS_BENCH_TASKS), and the summary is
-- printed as one JSON line that bench/run.py reads.

local tasks = tonumber(os.getenv("RAPS_BENCH_TASKS") or "10000")

request = function()
  return wrk.format("GET", "/task/p" .. math.random(0, tasks - 1))
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "socket_errors": %d, ' ..
    '"non_2xx": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration,
    errors.connect + errors.read + errors.write + errors.timeout,
    errors.status, latency:percentile(50), latency:percentile(99),
    latency.max))
end
