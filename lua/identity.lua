-- identity: which Redis server holds a round, and under which server the
-- round was last reconciled with the order store (I7). Run on the round's
-- own key, so on a cluster it asks the master that holds the round.
--
-- KEYS[1] reconciled_under  STRING run_id   dg:{<round>}:reconciled_under
--
-- Returns {run_id, role, reconciled_under ("" if never or lost)}.

local info = redis.call('INFO', 'server') .. redis.call('INFO', 'replication')
return {
  string.match(info, 'run_id:(%x+)'),
  string.match(info, 'role:(%a+)'),
  redis.call('GET', KEYS[1]) or '',
}
