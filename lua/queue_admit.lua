-- queue_admit: one admission step of a round's waiting room. Every
-- instance runs it every 100 ms; it counts time by Redis's clock and keeps
-- its progress in the state hash, so steps from many instances admit no
-- faster than one would.
--
-- Admission is allocation: an admitted ticket holds its holder's purchase
-- limit, less what they already hold, until they hold the limit or the
-- ticket expires; the next in line is admitted only while units not held
-- remain.
--
-- KEYS[1] entries  ZSET  user -> draw score / arrival   dg:{<round>}:queue:entries
-- KEYS[2] state    HASH  (see queue_enter.lua) and tokens, last, measured_at,
--                        measured_admitted               dg:{<round>}:queue:state
-- KEYS[3] admits   HASH  user -> admitted at (unix ms)   dg:{<round>}:queue:admits
-- KEYS[4] pending  ZSET  user -> admitted at, while the ticket may hold units
--                                                        dg:{<round>}:queue:pending
-- KEYS[5] stock    HASH  sku -> units left (the engine's) dg:{<round>}:stock
-- KEYS[6] held     HASH  user -> units held (the engine's) dg:{<round>}:held
--
-- ARGV: configured admit rate (per second), per-user limit, ticket ttl (ms),
--       draw at (unix ms)
--
-- Returns {-6} when the round is not set up in Redis (set it up, then call
-- again), else {entries, admitted, held, rate, measured (as a string),
-- sold out (0/1)}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, ttl, draw_at = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = KEYS[2]
local rate = tonumber(redis.call('HGET', state, 'rate') or ARGV[1])

local function figures()
  local s = redis.call('HMGET', state, 'admitted', 'held', 'measured', 'sold_out')
  return {redis.call('ZCARD', KEYS[1]), tonumber(s[1] or '0'), tonumber(s[2] or '0'),
          rate, s[3] or tostring(rate), tonumber(s[4] or '0')}
end
if now < draw_at then return figures() end
if redis.call('EXISTS', KEYS[5]) == 0 then return {-6} end

-- Holds: expired tickets give theirs back; used-up ones leave.
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. string.format('%.0f', now - ttl))
local pending = redis.call('ZRANGE', KEYS[4], 0, -1)
local held = 0
for i = 1, #pending, 1000 do
  local chunk = {}
  for j = i, math.min(i + 999, #pending) do chunk[#chunk + 1] = pending[j] end
  local holdings = redis.call('HMGET', KEYS[6], unpack(chunk))
  for j = 1, #chunk do
    local h = tonumber(holdings[j] or '0')
    if h >= limit then redis.call('ZREM', KEYS[4], chunk[j]) else held = held + limit - h end
  end
end
local remaining = 0
for _, left in ipairs(redis.call('HVALS', KEYS[5])) do remaining = remaining + tonumber(left) end

-- The rate's tokens, counted from the draw.
local s = redis.call('HMGET', state, 'tokens', 'last', 'cursor', 'admitted')
local last = tonumber(s[2] or tostring(draw_at))
local tokens = math.min(math.max(rate, 1), tonumber(s[1] or '0') + math.max(now - last, 0) * rate / 1000)
local cursor = s[3] or '-1'
local admitted = tonumber(s[4] or '0')

local free = remaining - held
local held_now = held
if tokens >= 1 and free > 0 then
  local want = math.min(math.floor(tokens), math.ceil(free / limit))
  local next_in_line = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. cursor, '+inf',
    'WITHSCORES', 'LIMIT', 0, want)
  for i = 1, #next_in_line, 2 do
    local user = next_in_line[i]
    redis.call('HSET', KEYS[3], user, now)
    redis.call('ZADD', KEYS[4], now, user)
    cursor = next_in_line[i + 1]
    admitted = admitted + 1
    tokens = tokens - 1
    local hold = math.min(limit, free)
    free = free - hold
    held_now = held_now + hold
  end
end

-- The admission rate measured, smoothed, about once a second.
local m = redis.call('HMGET', state, 'measured_at', 'measured_admitted', 'measured')
local measured_at = tonumber(m[1] or '0')
if measured_at == 0 then
  redis.call('HSET', state, 'measured_at', now, 'measured_admitted', admitted)
elseif now - measured_at >= 1000 then
  local sample = (admitted - tonumber(m[2])) * 1000 / (now - measured_at)
  local measured = tonumber(m[3] or tostring(rate)) * 0.5 + sample * 0.5
  redis.call('HSET', state, 'measured_at', now, 'measured_admitted', admitted,
    'measured', tostring(measured))
end

local sold_out = 0
if remaining == 0 and held == 0 then sold_out = 1 end
redis.call('HSET', state, 'tokens', tostring(tokens), 'last', now, 'cursor', cursor,
  'admitted', admitted, 'held', held_now, 'sold_out', sold_out)
return figures()
