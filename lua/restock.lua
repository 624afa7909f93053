-- restock: add units of one SKU to a round that is set up, once per restock id.
--
-- KEYS[1] stock     HASH sku -> units left                dg:{<round>}:stock
-- KEYS[2] restocks  HASH restock id -> sku "\n" units      dg:{<round>}:restocks
-- ARGV[1] sku, ARGV[2] units to add (> 0), ARGV[3] restock id
--
-- Returns the units now left; -6 if the round is not set up (run
-- reconcile.lua, which counts every stored restock, then call again);
-- -7 if this restock id was applied before (a retry: nothing added).

if redis.call('EXISTS', KEYS[1]) == 0 then return -6 end
if redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[1] .. '\n' .. ARGV[2]) == 0 then return -7 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[2]))
