-- reserve: decide one reservation in one atomic step and queue the winner.
--
-- KEYS[1] stock    HASH  sku -> units left in the round      dg:{<round>}:stock
-- KEYS[2] held     HASH  user -> units the user holds         dg:{<round>}:held
-- KEYS[3] keys     HASH  user "\n" key -> fingerprint "\n" order id
--                                                             dg:{<round>}:keys
-- KEYS[4] orders   HASH  order id -> order JSON               dg:{<round>}:orders
-- KEYS[5] live     HASH  order id -> sku "\n" units "\n" user dg:{<round>}:live
-- KEYS[6] winners  STREAM of won orders for the order writer  dg:{<round>}:winners
--
-- ARGV[1] opens_at, ARGV[2] closes_at (unix ms; checked against Redis TIME)
-- ARGV[3] sku, ARGV[4] units, ARGV[5] per-user limit, ARGV[6] user
-- ARGV[7] idempotency key ("" for none), ARGV[8] request fingerprint
-- ARGV[9] order id, ARGV[10] order JSON
--
-- Returns {code, detail}:
--    1 won                 detail: the order JSON
--    2 idempotent replay   detail: the earlier order's JSON
--   -1 not open yet        detail: opens_at
--   -2 closed
--   -3 sold out
--   -4 limit exceeded      detail: the limit
--   -5 key reused for another request
--   -6 round not set up    (run setup_round.lua, then call again)
--
-- Redis does not roll back a script that fails half-way, so every read and
-- check comes before the first write.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(ARGV[1]) then return {-1, ARGV[1]} end
if now >= tonumber(ARGV[2]) then return {-2, ''} end

local key_field = false
if ARGV[7] ~= '' then
  key_field = ARGV[6] .. '\n' .. ARGV[7]
  local earlier = redis.call('HGET', KEYS[3], key_field)
  if earlier then
    local cut = string.find(earlier, '\n', 1, true)
    if string.sub(earlier, 1, cut - 1) ~= ARGV[8] then return {-5, ''} end
    return {2, redis.call('HGET', KEYS[4], string.sub(earlier, cut + 1))}
  end
end

local left = redis.call('HGET', KEYS[1], ARGV[3])
if not left then return {-6, ''} end
local units = tonumber(ARGV[4])
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[6]) or '0')
if held + units > tonumber(ARGV[5]) then return {-4, ARGV[5]} end
if tonumber(left) < units then return {-3, ''} end

redis.call('HINCRBY', KEYS[1], ARGV[3], -units)
redis.call('HINCRBY', KEYS[2], ARGV[6], units)
redis.call('HSET', KEYS[5], ARGV[9], ARGV[3] .. '\n' .. ARGV[4] .. '\n' .. ARGV[6])
redis.call('HSET', KEYS[4], ARGV[9], ARGV[10])
if key_field then
  redis.call('HSET', KEYS[3], key_field, ARGV[8] .. '\n' .. ARGV[9])
end
redis.call('XADD', KEYS[6], '*', 'order', ARGV[10], 'key', ARGV[7], 'fingerprint', ARGV[8])
return {1, ARGV[10]}
