-- GCRA for every policy of one client key, all or nothing, in one round trip.
-- The same arithmetic as gcra.py, over integer microseconds of the server's clock
-- (exact in Lua's doubles up to 2^53 us, about 285 years).
-- KEYS[1]: the client's hash (one field per policy: its TAT), so the script
--          touches a single key and works on Redis Cluster.
-- ARGV[1]: cost; then per policy: field, interval (us), burst.
-- Returns {allowed (0/1), deciding policy index (0-based), remaining,
--          retry_after_us, reset_after_us}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local cost = tonumber(ARGV[1])
local count = (#ARGV - 1) / 3
local fields = {}
for i = 1, count do
  fields[i] = ARGV[3 * i - 1]
end
local stored = redis.call('HMGET', KEYS[1], unpack(fields))

local new_tats = {}
local rejected, longest_wait = 0, -1
local fewest, fewest_remaining = 0, 0
for i = 1, count do
  local interval = tonumber(ARGV[3 * i])
  local limit = tonumber(ARGV[3 * i + 1]) * interval
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
  local interval = tonumber(ARGV[3 * rejected])
  local limit = tonumber(ARGV[3 * rejected + 1]) * interval
  local base = new_tats[rejected]
  return {0, rejected - 1, math.floor((limit - (base - now)) / interval), longest_wait, base - now}
end

local pairs_ = {}
local longest_state = 0
for i = 1, count do
  pairs_[2 * i - 1] = fields[i]
  pairs_[2 * i] = string.format('%.0f', new_tats[i])
  if new_tats[i] - now > longest_state then
    longest_state = new_tats[i] - now
  end
end
redis.call('HSET', KEYS[1], unpack(pairs_))
-- the state is idle once every TAT has passed: let Redis drop it then, but never
-- shorten the life of a field another policy set (another route) wrote
local ttl_ms = math.ceil(longest_state / 1000) + 1
if redis.call('PTTL', KEYS[1]) < ttl_ms then
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
end
return {1, fewest - 1, fewest_remaining, 0, new_tats[fewest] - now}
