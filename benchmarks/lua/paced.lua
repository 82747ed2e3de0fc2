-- Fixed-rate (paced) load for wrk, which has no rate option (wrk2 is not in Debian).
--   wrk -t T -c C -d D -s paced.lua URL -- RATE T
-- Each thread hands out send slots every T/RATE seconds on a monotonic clock (LuaJIT
-- ffi clock_gettime); a keep-alive connection that finished its response waits, through
-- wrk's delay() hook, until the next free slot. The offered rate is therefore RATE on
-- average as long as C connections suffice (C >= RATE x latency, plus the 1 ms timer
-- granularity of wrk's event loop); a server that cannot keep up falls behind schedule,
-- and the achieved rate (reported) drops below RATE. Debt is capped at 1 s so a stall
-- is not followed by a long burst. wrk starts its latency clock when the request is
-- written, after the delay: latency is the server's response time, not schedule lag
-- (no coordinated-omission correction; runs compared are paced the same way).
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
int clock_gettime(int clk_id, bench_timespec_t *tp);
]]
local ts = ffi.new("bench_timespec_t")
local CLOCK_MONOTONIC = 1

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000.0 + tonumber(ts.tv_nsec) / 1e6
end

local interval_ms = 1.0
local next_slot = nil

function init(args)
  local rate = tonumber(args[1])
  local threads = tonumber(args[2] or "1")
  interval_ms = 1000.0 * threads / rate
end

function delay()
  local now = now_ms()
  if next_slot == nil or now - next_slot > 1000.0 then
    next_slot = now
  end
  next_slot = next_slot + interval_ms
  local wait = next_slot - now
  if wait < 1.0 then
    return 0
  end
  return math.floor(wait)
end
