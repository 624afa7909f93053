-- release: give an ended order's units back to its round, exactly once.
--
-- KEYS[1] stock  HASH sku -> units left              dg:{<round>}:stock
-- KEYS[2] held   HASH user -> units held             dg:{<round>}:held
-- KEYS[3] live   HASH order id -> sku "\n" units "\n" user
--                                                    dg:{<round>}:live
-- KEYS[4] ended  SET of order ids whose units came back
--                                                    dg:{<round>}:ended
-- ARGV[1] order id
--
-- Returns 1 if this call returned the units, 0 if the order held none
-- (already released, or never live in this round).
--
-- A round being reconciled has no stock hash (reconcile.lua recomputes it
-- from the live orders): then only the order leaves the live set, since a
-- stock hash made here would hold this one SKU's units alone.

local holding = redis.call('HGET', KEYS[3], ARGV[1])
if not holding then return 0 end
local first = string.find(holding, '\n', 1, true)
local second = string.find(holding, '\n', first + 1, true)
local sku = string.sub(holding, 1, first - 1)
local units = tonumber(string.sub(holding, first + 1, second - 1))
local user = string.sub(holding, second + 1)

redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], sku, units)
end
if redis.call('HINCRBY', KEYS[2], user, -units) <= 0 then
  redis.call('HDEL', KEYS[2], user)
end
return 1
