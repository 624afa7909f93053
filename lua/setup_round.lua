-- setup_round: create a round's stock, holdings and live orders if absent.
-- A restart or a second instance must never reset a round that exists, so
-- this does nothing when the stock hash is already there.
--
-- KEYS[1] stock  HASH sku -> units left              dg:{<round>}:stock
-- KEYS[2] held   HASH user -> units held             dg:{<round>}:held
-- KEYS[3] live   HASH order id -> sku "\n" units "\n" user
--                                                    dg:{<round>}:live
-- ARGV: n_skus, then n_skus pairs (sku, units left),
--       then pairs (order id, sku "\n" units "\n" user) for the live orders
--       the order store already holds (empty for a new round).
--
-- Returns 1 if it created the round, 0 if the round existed.

if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n_skus = tonumber(ARGV[1])
for i = 0, n_skus - 1 do
  redis.call('HSET', KEYS[1], ARGV[2 + 2 * i], ARGV[3 + 2 * i])
end
for i = 2 + 2 * n_skus, #ARGV, 2 do
  local holding = ARGV[i + 1]
  local first = string.find(holding, '\n', 1, true)
  local second = string.find(holding, '\n', first + 1, true)
  local units = tonumber(string.sub(holding, first + 1, second - 1))
  redis.call('HSET', KEYS[3], ARGV[i], holding)
  redis.call('HINCRBY', KEYS[2], string.sub(holding, second + 1), units)
end
return 1
