-- restock: add units of one SKU to a round that is set up.
--
-- KEYS[1] stock  HASH sku -> units left   dg:{<round>}:stock
-- ARGV[1] sku, ARGV[2] units to add (> 0)
--
-- Returns the units now left, or -6 if the round is not set up (run
-- setup_round.lua, then call again). A round set up from the order store
-- afterwards would count the restock twice, so the caller sets it up first.

if redis.call('EXISTS', KEYS[1]) == 0 then return -6 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[2]))
