-- The naive baseline that `loadtest/run redis` and `loadtest/script_floor`
-- compare reserve.lua with: one call per reservation doing GET, HGET,
-- DECRBY, HINCRBY and XADD of the order text, no window, key or live record.
-- KEYS: stock (STRING), held (HASH), winners (STREAM); ARGV: user, order text.
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if left < 1 or held >= 1000000000 then return 0 end
redis.call('DECRBY', KEYS[1], 1)
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('XADD', KEYS[3], '*', 'order', ARGV[2])
return 1
