-- reconcile: make a round in Redis know at least what the order store
-- knows (I7), creating it if absent. Run when Redis may have lost or rolled
-- back state: a round it does not know, a restart, a failover.
--
-- Safe at any time and from several instances at once: it adds the live
-- orders the store knows, removes the orders the store has ended, keeps
-- the live orders only Redis knows (winners the order writer has not
-- stored yet), and recomputes stock and holdings from the live orders:
--   stock[sku] = allocated[sku] - units live in sku
--   held[user] = units live for user
-- The orders' JSON, idempotency keys and restock ids are put back by the
-- caller beforehand (plain HSETs, in chunks); this script settles the
-- numbers in one atomic step.
--
-- KEYS[1] stock  HASH sku -> units left              dg:{<round>}:stock
-- KEYS[2] held   HASH user -> units held             dg:{<round>}:held
-- KEYS[3] live   HASH order id -> sku "\n" units "\n" user
--                                                    dg:{<round>}:live
-- KEYS[4] ended  SET of order ids whose units came back
--                                                    dg:{<round>}:ended
-- ARGV[1] n_skus, then n_skus pairs (sku, units allocated: stock + restocks),
--   then n_live, then n_live pairs (order id, holding) live in the store,
--   then the ids of the orders the store has ended (to the end of ARGV).
--
-- Returns the units live in the round after the merge.

local function parse(holding)
  local first = string.find(holding, '\n', 1, true)
  local second = string.find(holding, '\n', first + 1, true)
  return string.sub(holding, 1, first - 1),
    tonumber(string.sub(holding, first + 1, second - 1)),
    string.sub(holding, second + 1)
end

local n_skus = tonumber(ARGV[1])
local at = 2 + 2 * n_skus
local n_live = tonumber(ARGV[at])
-- Stored live orders: back in the live set, unless their units already
-- came back (released while this reconciliation read the store).
for i = at + 1, at + 2 * n_live, 2 do
  if redis.call('SISMEMBER', KEYS[4], ARGV[i]) == 0 then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
end
-- Ended in the store: out of the live set for good.
for i = at + 1 + 2 * n_live, #ARGV do
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('SADD', KEYS[4], ARGV[i])
end

local sold, held, total = {}, {}, 0
local live = redis.call('HGETALL', KEYS[3])
for i = 2, #live, 2 do
  local sku, units, user = parse(live[i])
  sold[sku] = (sold[sku] or 0) + units
  held[user] = (held[user] or 0) + units
  total = total + units
end
redis.call('DEL', KEYS[1], KEYS[2])
for i = 0, n_skus - 1 do
  local sku = ARGV[2 + 2 * i]
  local left = tonumber(ARGV[3 + 2 * i]) - (sold[sku] or 0)
  if left < 0 then left = 0 end
  redis.call('HSET', KEYS[1], sku, left)
end
for user, units in pairs(held) do
  redis.call('HSET', KEYS[2], user, units)
end
return total
