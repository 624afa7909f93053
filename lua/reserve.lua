-- reserve: decide reservations of one round, each in one atomic step, and
-- queue the winners. Several attempts may come in one call (the engine
-- gathers the attempts that arrive while earlier calls are in flight); they
-- are decided one after another, in order, as separate calls would be.
-- An attempt sent again (a call retried after its connection dropped) is
-- known by its order id and answered as before, never decided twice.
--
-- KEYS[1] stock    HASH  sku -> units left in the round      dg:{<round>}:stock
-- KEYS[2] held     HASH  user -> units the user holds         dg:{<round>}:held
-- KEYS[3] keys     HASH  user "\n" key -> fingerprint "\n" order id
--                                                             dg:{<round>}:keys
-- KEYS[4] orders   HASH  order id -> order JSON               dg:{<round>}:orders
-- KEYS[5] live     HASH  order id -> sku "\n" units "\n" user dg:{<round>}:live
-- KEYS[6] winners  STREAM of won order ids (with the key and fingerprint)
--                  for the order writer, which reads their JSON from
--                  KEYS[4]: the order text is kept once  dg:{<round>}:winners
--
-- ARGV[1] n, the number of attempts; ARGV[2] "1" if this call may have run
-- before (sent again), else "0"; then 10 arguments per attempt:
--   opens_at, closes_at (unix ms; checked against Redis TIME), sku, units,
--   per-user limit, user, idempotency key ("" for none), request
--   fingerprint, order id, order JSON
--
-- Returns {code, detail} per attempt, flattened: {code1, detail1, code2, ...}
--    1 won                 detail: the order JSON
--    2 idempotent replay   detail: the earlier order's JSON
--   -1 not open yet        detail: opens_at
--   -2 closed
--   -3 sold out
--   -4 limit exceeded      detail: the limit
--   -5 key reused for another request
--   -6 round not set up, or fenced while it is reconciled (run reconcile.lua,
--                         then call again)
--
-- Redis does not roll back a script that fails half-way, so within each
-- attempt every read and check comes before the first write.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local resent = ARGV[2] == '1'

local function decide(opens_at, closes_at, sku, units_arg, limit, user, key, fingerprint, order_id, order)
  if resent then
    local sent_before = redis.call('HGET', KEYS[4], order_id)
    if sent_before then return 1, sent_before end
  end
  if now < tonumber(opens_at) then return -1, opens_at end
  if now >= tonumber(closes_at) then return -2, '' end

  local key_field = false
  if key ~= '' then
    key_field = user .. '\n' .. key
    local earlier = redis.call('HGET', KEYS[3], key_field)
    if earlier then
      local cut = string.find(earlier, '\n', 1, true)
      if string.sub(earlier, 1, cut - 1) ~= fingerprint then return -5, '' end
      local order = redis.call('HGET', KEYS[4], string.sub(earlier, cut + 1))
      if order then
        -- Written again (unchanged), so that the caller's WAIT for replicas
        -- (replica_acks) covers the win it replays, not only its own writes.
        redis.call('HSET', KEYS[3], key_field, earlier)
        return 2, order
      end
      -- Its order was voided (reconcile.lua): the key decides anew.
    end
  end

  local left = redis.call('HGET', KEYS[1], sku)
  if not left then return -6, '' end
  local units = tonumber(units_arg)
  local held = tonumber(redis.call('HGET', KEYS[2], user) or '0')
  if held + units > tonumber(limit) then return -4, limit end
  if tonumber(left) < units then return -3, '' end

  redis.call('HINCRBY', KEYS[1], sku, -units)
  redis.call('HINCRBY', KEYS[2], user, units)
  redis.call('HSET', KEYS[5], order_id, sku .. '\n' .. units_arg .. '\n' .. user)
  redis.call('HSET', KEYS[4], order_id, order)
  if key_field then
    redis.call('HSET', KEYS[3], key_field, fingerprint .. '\n' .. order_id)
  end
  redis.call('XADD', KEYS[6], '*', 'id', order_id, 'key', key, 'fingerprint', fingerprint)
  return 1, order
end

local answers = {}
for i = 0, tonumber(ARGV[1]) - 1 do
  local a = 2 + i * 10
  local code, detail = decide(unpack(ARGV, a + 1, a + 10))
  answers[#answers + 1] = code
  answers[#answers + 1] = detail
end
return answers
