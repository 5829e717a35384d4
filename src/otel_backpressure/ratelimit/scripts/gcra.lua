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
--
-- Cheap on the server (every microsecond here is the whole fleet's): the arguments
-- are the store's own numbers, so they are read with `+ 0` (one string-to-number
-- parse; tonumber parses twice), while a stored value may be anything and goes
-- through tonumber (nil for garbage: overwritten like an idle key). Numbers go to
-- Redis as %d strings: Redis formats a Lua number with %.17g, twice the cost. A
-- request under one policy (the usual case) takes a path without tables.
local now
local expire = ARGV[1] == ''
if expire then
  local time = redis.call('TIME')
  now = time[1] * 1000000 + time[2]
else
  now = ARGV[1] + 0
end

local out = {}
local k, a, last = 0, 2, #ARGV
while a <= last do
  local cost, count = ARGV[a] + 0, ARGV[a + 1] + 0
  if count == 1 then
    local key = KEYS[k + 1]
    local interval = ARGV[a + 2] + 0
    local tolerance = ARGV[a + 3] * interval
    -- pcall: a key of another type (WRONGTYPE) fails this request, not the batch
    local stored = redis.pcall('GET', key)
    if type(stored) == 'table' then
      out[#out + 1] = '-1 0 0 0 0'
    else
      local base = tonumber(stored) or now
      if base < now then
        base = now
      end
      local new_tat = base + cost * interval
      local wait = new_tat - now - tolerance
      if wait > 0 then
        -- a rejection consumes nothing: nothing is written
        out[#out + 1] = string.format('0 0 %d %d %d',
          math.floor((tolerance - (base - now)) / interval), wait, base - now)
      else
        -- the state is idle once its TAT has passed: let Redis drop it then
        if expire then
          redis.call('SET', key, string.format('%d', new_tat),
            'PX', string.format('%d', math.ceil((new_tat - now) / 1000) + 1))
        else
          redis.call('SET', key, string.format('%d', new_tat))
        end
        out[#out + 1] = string.format('1 0 %d 0 %d', math.floor(-wait / interval),
          new_tat - now)
      end
    end
    k = k + 1
    a = a + 4
  else
    local new_tats = {}
    local rejected, longest_wait = 0, -1
    local fewest, fewest_remaining = 0, 0
    local foreign = false
    for i = 1, count do
      local interval = ARGV[a + 2 * i] + 0
      local tolerance = ARGV[a + 2 * i + 1] * interval
      local stored = redis.pcall('GET', KEYS[k + i])
      if type(stored) == 'table' then
        foreign = true
        break
      end
      local base = tonumber(stored) or now
      if base < now then
        base = now
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
      local interval = ARGV[a + 2 * rejected] + 0
      local tolerance = ARGV[a + 2 * rejected + 1] * interval
      local base = new_tats[rejected]
      out[#out + 1] = string.format('0 %d %d %d %d', rejected - 1,
        math.floor((tolerance - (base - now)) / interval), longest_wait, base - now)
    else
      for i = 1, count do
        local tat = string.format('%d', new_tats[i])
        if expire then
          redis.call('SET', KEYS[k + i], tat,
            'PX', string.format('%d', math.ceil((new_tats[i] - now) / 1000) + 1))
        else
          redis.call('SET', KEYS[k + i], tat)
        end
      end
      out[#out + 1] = string.format('1 %d %d 0 %d', fewest - 1, fewest_remaining,
        new_tats[fewest] - now)
    end
    k = k + count
    a = a + 2 + 2 * count
  end
end
if #out == 1 then
  return out[1]
end
return table.concat(out, ' ')
