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
-- KEYS[6] winners  STREAM for the order writer: one entry per call that
--                  won anything, naming its wins in three lists, one line
--                  each ('ids', 'keys', 'fingerprints'; order ids, keys and
--                  SKU ids hold no line breaks); the writer reads the
--                  orders' JSON from KEYS[4]: the text is kept once.
--                  One entry per call rather than per win: each entry costs
--                  Redis its own XADD, and its own XCLAIM in the AOF when
--                  the writer reads it in the consumer group.
--                                                    dg:{<round>}:winners
-- KEYS[7] unstored STRING wins in KEYS[6] not yet acknowledged by the
--                  order writer (lua/ack.lua takes them off): the writer's
--                  lag, counted in wins   dg:{<round>}:unstored
--
-- ARGV[1] n, the number of attempts; ARGV[2] "1" if this call may have run
-- before (sent again), else "0"; then 10 arguments per attempt:
--   opens_at, closes_at (unix ms; checked against Redis TIME), sku, units,
--   per-user limit, user, idempotency key ("" for none), request
--   fingerprint, order id, order JSON
--
-- Returns {code, detail} per attempt, flattened: {code1, detail1, code2, ...}
--    1 won                 detail: "" (the caller has the order it sent)
--    2 idempotent replay   detail: the earlier order's JSON
--   -1 not open yet        detail: opens_at
--   -2 closed
--   -3 sold out
--   -4 limit exceeded      detail: the limit
--   -5 key reused for another request
--   -6 round not set up, or fenced while it is reconciled (run reconcile.lua,
--                         then call again)
--
-- Redis does not roll back a script that fails half-way, so every read and
-- check comes first and every write at the end. Reads and writes are few
-- per call rather than per attempt (each call from Lua into Redis, and each
-- write it propagates to the AOF, costs more than the work it does): the
-- round's stock and each shopper's holding are read once and kept here,
-- and each hash is written once with every field the call changed.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local resent = ARGV[2] == '1'

-- What this call has read or decided so far, by field.
local lefts, helds = {}, {}
local keys_now, orders_now = {}, {}
-- The writes, in order: field, value, field, value, ...
local stock_w, held_w, live_w, orders_w, keys_w = {}, {}, {}, {}, {}
-- The wins, for the writer's entry: order ids, keys, fingerprints.
local won_ids, won_keys, won_fingerprints = {}, {}, {}

local function held_by(user)
  local held = helds[user]
  if held == nil then
    held = tonumber(redis.call('HGET', KEYS[2], user) or '0')
    helds[user] = held
  end
  return held
end

local function key_entry(field)
  local entry = keys_now[field]
  if entry == nil then
    entry = redis.call('HGET', KEYS[3], field) or false
    keys_now[field] = entry
  end
  return entry
end

local function order_text(id)
  return orders_now[id] or redis.call('HGET', KEYS[4], id)
end

local function decide(opens_at, closes_at, sku, units_arg, limit, user, key, fingerprint, order_id, order)
  if resent then
    if redis.call('HEXISTS', KEYS[4], order_id) == 1 then return 1, '' end
  end
  if now < tonumber(opens_at) then return -1, opens_at end
  if now >= tonumber(closes_at) then return -2, '' end

  local key_field = false
  if key ~= '' then
    key_field = user .. '\n' .. key
    local earlier = key_entry(key_field)
    if earlier then
      local cut = string.find(earlier, '\n', 1, true)
      if string.sub(earlier, 1, cut - 1) ~= fingerprint then return -5, '' end
      local text = order_text(string.sub(earlier, cut + 1))
      if text then
        -- Written again (unchanged), so that the caller's WAIT for replicas
        -- (replica_acks) covers the win it replays, not only its own writes.
        keys_w[#keys_w + 1] = key_field
        keys_w[#keys_w + 1] = earlier
        return 2, text
      end
      -- Its order was voided (reconcile.lua): the key decides anew.
    end
  end

  local left = lefts[sku]
  if left == nil then
    left = redis.call('HGET', KEYS[1], sku)
    if left then left = tonumber(left) end
    lefts[sku] = left
  end
  if not left then return -6, '' end
  local units = tonumber(units_arg)
  local held = held_by(user)
  if held + units > tonumber(limit) then return -4, limit end
  if left < units then return -3, '' end

  lefts[sku] = left - units
  helds[user] = held + units
  stock_w[sku] = true
  held_w[user] = true
  live_w[#live_w + 1] = order_id
  live_w[#live_w + 1] = sku .. '\n' .. units_arg .. '\n' .. user
  orders_w[#orders_w + 1] = order_id
  orders_w[#orders_w + 1] = order
  orders_now[order_id] = order
  if key_field then
    local entry = fingerprint .. '\n' .. order_id
    keys_now[key_field] = entry
    keys_w[#keys_w + 1] = key_field
    keys_w[#keys_w + 1] = entry
  end
  won_ids[#won_ids + 1] = order_id
  won_keys[#won_keys + 1] = key
  won_fingerprints[#won_fingerprints + 1] = fingerprint
  return 1, ''
end

local answers = {}
for i = 0, tonumber(ARGV[1]) - 1 do
  local a = 2 + i * 10
  local code, detail = decide(unpack(ARGV, a + 1, a + 10))
  answers[#answers + 1] = code
  answers[#answers + 1] = detail
end

-- The writes: each hash once, then the winners' entry.
local function hset(key, pairs_)
  if #pairs_ > 0 then redis.call('HSET', key, unpack(pairs_)) end
end
local stock_pairs, held_pairs = {}, {}
for sku in pairs(stock_w) do
  stock_pairs[#stock_pairs + 1] = sku
  -- As integer text: a number would go as Redis formats doubles, which
  -- HINCRBY (release.lua, restock.lua) may not read back.
  stock_pairs[#stock_pairs + 1] = string.format('%d', lefts[sku])
end
for user in pairs(held_w) do
  held_pairs[#held_pairs + 1] = user
  held_pairs[#held_pairs + 1] = string.format('%d', helds[user])
end
hset(KEYS[1], stock_pairs)
hset(KEYS[2], held_pairs)
hset(KEYS[5], live_w)
hset(KEYS[4], orders_w)
hset(KEYS[3], keys_w)
if #won_ids > 0 then
  redis.call('XADD', KEYS[6], '*', 'ids', table.concat(won_ids, '\n'),
    'keys', table.concat(won_keys, '\n'), 'fingerprints', table.concat(won_fingerprints, '\n'))
  redis.call('INCRBY', KEYS[7], #won_ids)
end
return answers
