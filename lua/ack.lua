-- ack: acknowledge winners the order writer has stored (or kept aside), and
-- trim the stream of every entry no consumer still needs. Trimming by MINID
-- drops whole stream nodes; XDEL of each entry scanned its node (up to 100
-- small entries) once per id.
--
-- KEYS[1] winners  STREAM of won order ids      dg:{<round>}:winners
-- KEYS[2] unstored STRING wins in the stream not yet acknowledged
--                                                dg:{<round>}:unstored
-- ARGV[1] the consumer group; then pairs: an entry id acknowledged and the
-- wins it counted in KEYS[2] (0 for an entry of an earlier version, which
-- wrote one entry per win and kept no count)
--
-- Entries are delivered in id order: every entry up to the group's last
-- delivered id has been delivered, so it is acknowledged or pending in some
-- consumer. The stream is trimmed up to the oldest still pending, or, with
-- none pending, past the last delivered: whatever order the acknowledgements
-- came in (a claimed entry acknowledged after later ones), an acknowledged
-- entry does not outlive the next call.
-- Each entry is acknowledged on its own: only an entry still pending in the
-- group takes its wins off the count (another writer may have acknowledged
-- it first, after claiming it). Returns the entries trimmed.

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local stored = 0
for i = 2, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    stored = stored + tonumber(ARGV[i + 1])
  end
end
-- Never below zero (a count lost with Redis's state, say).
if stored > 0 and redis.call('DECRBY', KEYS[2], stored) < 0 then
  redis.call('SET', KEYS[2], 0)
end

local keep
local oldest = redis.call('XPENDING', KEYS[1], ARGV[1])[2]
if oldest then
  keep = oldest
else
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local fields = {}
    for j = 1, #group, 2 do fields[group[j]] = group[j + 1] end
    if fields['name'] == ARGV[1] then
      local ms, seq = parse(fields['last-delivered-id'])
      keep = string.format('%d-%d', ms, seq + 1)
    end
  end
end
if not keep then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', keep)
