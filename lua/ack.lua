-- ack: acknowledge winners the order writer has stored (or kept aside), and
-- trim the stream of every entry no consumer still needs. Trimming by MINID
-- drops whole stream nodes; XDEL of each entry scanned its node (up to 100
-- small entries) once per id.
--
-- KEYS[1] winners  STREAM of won order ids      dg:{<round>}:winners
-- ARGV[1] the consumer group; ARGV[2..] the entry ids acknowledged
--
-- Entries are delivered in id order, so every entry at or below the highest
-- id acknowledged here has been delivered: it is acknowledged, or pending
-- in some consumer (the group's oldest pending id says where that starts).
-- Returns the entries trimmed.

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function before(a_ms, a_seq, b_ms, b_seq)
  return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end

redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
local top_ms, top_seq = parse(ARGV[2])
for i = 3, #ARGV do
  local ms, seq = parse(ARGV[i])
  if before(top_ms, top_seq, ms, seq) then top_ms, top_seq = ms, seq end
end
-- Keep from the entry after the highest acknowledged, or from the oldest
-- still pending if that is earlier.
local keep_ms, keep_seq = top_ms, top_seq + 1
local oldest = redis.call('XPENDING', KEYS[1], ARGV[1])[2]
if oldest then
  local ms, seq = parse(oldest)
  if before(ms, seq, keep_ms, keep_seq) then keep_ms, keep_seq = ms, seq end
end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', keep_ms, keep_seq))
