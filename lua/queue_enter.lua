-- queue_enter: joins of a round's waiting room, or looks at one's entry,
-- for every shopper of a batch in one call (the join storm at the opening
-- is this script and nothing else).
--
-- KEYS[1] entries  ZSET  user -> score: a random draw score below 2^52 for
--                        a join before the draw, 2^52 + n for the n-th later
--                        arrival                       dg:{<round>}:queue:entries
-- KEYS[2] state    HASH  seq, cursor (score of the last admitted entry),
--                        admitted, held, rate, measured, sold_out
--                                                      dg:{<round>}:queue:state
-- KEYS[3] admits   HASH  user -> admitted at (unix ms) dg:{<round>}:queue:admits
--
-- ARGV: queue opens at (unix ms), draw at (unix ms), ticket ttl (ms), n;
--       then per shopper: user, join ("1") or look ("0"), the draw score the
--       server drew for them (used only for a first join before the draw)
--
-- Returns 10 values per shopper, flattened: {-1, …} before the queue
-- opens, {0, …} when the user has no entry (a look), else {1, joined now
-- (0/1), position (-1 during the draw, 0 once admitted), admitted at (""
-- if not), entries, admitted, held, rate ("" if not set live), measured
-- ("" if not yet), sold out (0/1)}; "…" is padding.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local opens_at, draw_at, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local BEHIND = 4503599627370496 -- 2^52: every arrival after the draw
local function arrival()
  local n = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  return string.format('%.0f', BEHIND + n)
end

local function enter(user, join, draw_score)
  local score = redis.call('ZSCORE', KEYS[1], user)
  local at = redis.call('HGET', KEYS[3], user)
  local joined_now = 0
  if join == '1' then
    if not score then
      if now < draw_at then score = draw_score else score = arrival() end
      redis.call('ZADD', KEYS[1], score, user)
      joined_now = 1
    elseif at and now >= tonumber(at) + ttl then
      -- The ticket expired unused: back in line, behind everyone.
      redis.call('HDEL', KEYS[3], user)
      score = arrival()
      redis.call('ZADD', KEYS[1], 'XX', score, user)
      at = false
      joined_now = 1
    end
  end
  if not score then return {0, 0, 0, '', 0, 0, 0, '', '', 0} end
  local position = -1
  if at then
    position = 0
  elseif now >= draw_at then
    local cursor = redis.call('HGET', KEYS[2], 'cursor') or '-1'
    position = redis.call('ZCOUNT', KEYS[1], '(' .. cursor, score)
  end
  local s = redis.call('HMGET', KEYS[2], 'admitted', 'held', 'rate', 'measured', 'sold_out')
  return {1, joined_now, position, at or '', redis.call('ZCARD', KEYS[1]),
          s[1] or '0', s[2] or '0', s[3] or '', s[4] or '', s[5] or '0'}
end

local answers = {}
for i = 0, tonumber(ARGV[4]) - 1 do
  local a = 5 + i * 3
  local answer
  if now < opens_at then
    answer = {-1, 0, 0, '', 0, 0, 0, '', '', 0}
  else
    answer = enter(ARGV[a], ARGV[a + 1], ARGV[a + 2])
  end
  for _, value in ipairs(answer) do answers[#answers + 1] = value end
end
return answers
