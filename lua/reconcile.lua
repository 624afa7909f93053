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
-- KEYS[5] reconciled_under  STRING run_id of the server this ran on
--                                                    dg:{<round>}:reconciled_under
-- KEYS[6] orders HASH order id -> order JSON         dg:{<round>}:orders
-- KEYS[7] voided SET of order ids voided here        dg:{<round>}:voided
-- ARGV[1] n_skus, then n_skus pairs (sku, units allocated: stock + restocks),
--   then n_live, then n_live pairs (order id, holding) live in the store,
--   then the ids of the orders the store has ended (to the end of ARGV).
--
-- Two servers can have sold the same unit: a master that decided a win no
-- replica had, then lost its place (a failover), comes back as master with
-- it (Sentinel can fail back to it) while the other sold that unit again.
-- Such wins are known only to Redis (the store holds at most the stock),
-- and where a SKU's live units exceed its allocation, enough of them are
-- voided: out of the live set, their JSON removed (a retry of their key
-- decides anew), and listed in `voided` for the order writer, which keeps
-- them as dead letters instead of storing them. With `replica_acks` such
-- a win was answered 503, never 201.
--
-- Returns {units live in the round after the merge, orders voided}.

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

local allocated, stored = {}, {}
for i = 0, n_skus - 1 do
  allocated[ARGV[2 + 2 * i]] = tonumber(ARGV[3 + 2 * i])
end
for i = at + 1, at + 2 * n_live, 2 do
  stored[ARGV[i]] = true
end
local over = {}
local live = redis.call('HGETALL', KEYS[3])
for i = 2, #live, 2 do
  local sku, units = parse(live[i])
  over[sku] = (over[sku] or 0) + units
end
for sku, units in pairs(over) do
  over[sku] = units - (allocated[sku] or units)
end
local voided = 0
for i = 1, #live, 2 do
  local id = live[i]
  local sku, units = parse(live[i + 1])
  if over[sku] > 0 and not stored[id] then
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[6], id)
    redis.call('SADD', KEYS[4], id)
    redis.call('SADD', KEYS[7], id)
    over[sku] = over[sku] - units
    voided = voided + 1
  end
end

local sold, held, total = {}, {}, 0
live = redis.call('HGETALL', KEYS[3])
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
-- In the same step: this server now knows at least what the store knows.
local info = redis.call('INFO', 'server')
redis.call('SET', KEYS[5], string.match(info, 'run_id:(%x+)'))
return {total, voided}
