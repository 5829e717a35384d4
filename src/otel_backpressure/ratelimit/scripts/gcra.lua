-- GCRA for a batch of requests, each for one client key under one or more policies
-- (all or nothing per request), in one round trip. The same arithmetic as gcra.py,
-- over integer microseconds (exact in Lua's doubles up to 2^53 us, about 285 years).
-- Requests are decided in order, so two requests of one batch for the same key see
-- each other exactly as two separate calls would.
-- KEYS: every request's keys, request after request: the client's TAT under each of
--       its policies. A request's keys share the client's hash tag (one Cluster
--       slot); on Redis Cluster a batch holds one slot's requests only.
-- ARGV[1]: empty: decide at the server's clock (TIME) and let keys expire once idle.
--          Else the time to decide at, in us, for the tests that run this script and
--          gcra.py on the same inputs; the keys then do not expire (the test's clock
--          is not the server's).
-- ARGV[2..]: per request: cost, policy count n, then n times (interval in us, burst).
-- Returns one string of 5 integers per request, all separated by spaces: allowed
--          (0/1; -1 when a key holds another type, so the request cannot be
--          decided), deciding policy index (0-based), remaining, retry_after_us,
--          reset_after_us. One string, not an array: the client parses one reply
--          line per batch instead of five per decision.
local now = tonumber(ARGV[1])
local expire = now == nil
if expire then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

local out = {}
local k, a = 0, 2
while a <= #ARGV do
  local cost, count = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local new_tats = {}
  local rejected, longest_wait = 0, -1
  local fewest, fewest_remaining = 0, 0
  local foreign = false
  for i = 1, count do
    local interval = tonumber(ARGV[a + 2 * i])
    local tolerance = tonumber(ARGV[a + 2 * i + 1]) * interval
    -- pcall: a key of another type (WRONGTYPE) fails this request, not the batch
    local stored = redis.pcall('GET', KEYS[k + i])
    if type(stored) == 'table' then
      foreign = true
      break
    end
    local tat = tonumber(stored)
    local base = now
    if tat and tat > now then
      base = tat
    end
    local new_tat = base + cost * interval
    local wait = new_tat - now - tolerance
    if wait > 0 then
      if wait > longest_wait then
        rejected, longest_wait = i, wait
      end
      new_tats[i] = base
    else
      local remaining = math.floor(-wait / interval)
      if fewest == 0 or remaining < fewest_remaining then
        fewest, fewest_remaining = i, remaining
      end
      new_tats[i] = new_tat
    end
  end
  if foreign then
    out[#out + 1] = '-1 0 0 0 0'
  elseif rejected > 0 then
    -- a rejection consumes nothing under any policy: nothing is written
    local interval = tonumber(ARGV[a + 2 * rejected])
    local tolerance = tonumber(ARGV[a + 2 * rejected + 1]) * interval
    local base = new_tats[rejected]
    out[#out + 1] = string.format('0 %d %d %d %d', rejected - 1,
      math.floor((tolerance - (base - now)) / interval), longest_wait, base - now)
  else
    for i = 1, count do
      -- numbers go to Redis in full precision (Lua's tostring would round them);
      -- the state is idle once its TAT has passed: let Redis drop it then
      if expire then
        redis.call('SET', KEYS[k + i], new_tats[i], 'PX', math.ceil((new_tats[i] - now) / 1000) + 1)
      else
        redis.call('SET', KEYS[k + i], new_tats[i])
      end
    end
    out[#out + 1] = string.format('1 %d %d 0 %d', fewest - 1, fewest_remaining,
      new_tats[fewest] - now)
  end
  k = k + count
  a = a + 2 + 2 * count
end
return table.concat(out, ' ')
