-- GCRA for every policy of one client key, all or nothing, in one round trip.
-- The same arithmetic as gcra.py, over integer microseconds of the server's clock
-- (exact in Lua's doubles up to 2^53 us, about 285 years).
-- KEYS[i]: the client's TAT under policy i. All keys share the client's hash tag,
--          so they live in one slot and the script runs on Redis Cluster.
-- ARGV[1]: cost; then per policy: interval (us), burst.
-- Returns {allowed (0/1), deciding policy index (0-based), remaining,
--          retry_after_us, reset_after_us}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local cost = tonumber(ARGV[1])
local count = #KEYS
local stored = redis.call('MGET', unpack(KEYS))

local new_tats = {}
local rejected, longest_wait = 0, -1
local fewest, fewest_remaining = 0, 0
for i = 1, count do
  local interval = tonumber(ARGV[2 * i])
  local limit = tonumber(ARGV[2 * i + 1]) * interval
  local tat = tonumber(stored[i])
  local base = now
  if tat and tat > now then
    base = tat
  end
  local new_tat = base + cost * interval
  local wait = new_tat - now - limit
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

if rejected > 0 then
  -- a rejection consumes nothing under any policy: nothing is written
  local interval = tonumber(ARGV[2 * rejected])
  local limit = tonumber(ARGV[2 * rejected + 1]) * interval
  local base = new_tats[rejected]
  return {0, rejected - 1, math.floor((limit - (base - now)) / interval), longest_wait, base - now}
end

for i = 1, count do
  -- the state is idle once its TAT has passed: let Redis drop it then
  -- (numbers go to Redis in full precision; Lua's tostring would round them)
  redis.call('SET', KEYS[i], new_tats[i], 'PX', math.ceil((new_tats[i] - now) / 1000) + 1)
end
return {1, fewest - 1, fewest_remaining, 0, new_tats[fewest] - now}
