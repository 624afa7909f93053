-- wrk script: POST reserve as many different shoppers, round-robin over a
-- file of tokens (one JWT a line). Counts answers by status.
--   wrk -t2 -c64 -d10s -s loadtest/reserve.lua http://127.0.0.1:PORT
-- Env: TOKENS (file), DROP, SKU. With HEALTHZ=1 it sends GET /healthz
-- instead, through the same Lua calls, so that a ratio of the two rates
-- compares the server's work and not wrk's (its Lua response() callback
-- costs wrk time on every answer). With CALL=join it joins the drop's
-- waiting room (POST /api/v1/drops/DROP/queue) as each shopper; with
-- CALL=drops it sends GET /api/v1/drops (the page refresh). With TICKET
-- set, reserves carry it as Queue-Ticket (a queued drop's ticket check).
-- With DROPS (comma-separated drop ids), reserves go to those drops in
-- turn (many drops on sale at once).

local healthz = os.getenv("HEALTHZ") == "1"
local call = os.getenv("CALL") or "reserve"
local tokens = {}
if not healthz and call ~= "drops" then
  for line in io.lines(os.getenv("TOKENS")) do
    tokens[#tokens + 1] = line
  end
end
local drop = os.getenv("DROP") or ""
local path = "/api/v1/drops/" .. drop .. "/reserve"
local body = '{"sku": "' .. (os.getenv("SKU") or "") .. '", "quantity": 1}'
if call == "join" then
  path, body = "/api/v1/drops/" .. drop .. "/queue", ""
end
local threads = {}
local thread_id = 0

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

-- Requests are formatted once here: formatting one per call in request()
-- made wrk, not the server, the bottleneck.
function init(args)
  requests = {}
  if healthz then
    requests[1] = wrk.format("GET", "/healthz")
  elseif call == "drops" then
    requests[1] = wrk.format("GET", "/api/v1/drops")
  end
  local drops = {}
  for id in string.gmatch(os.getenv("DROPS") or "", "[^,]+") do
    drops[#drops + 1] = id
  end
  for i, token in ipairs(tokens) do
    if #drops > 0 then
      path = "/api/v1/drops/" .. drops[(i - 1) % #drops + 1] .. "/reserve"
    end
    requests[i] = wrk.format("POST", path, {
      ["Authorization"] = "Bearer " .. token,
      ["Content-Type"] = "application/json",
      ["Queue-Ticket"] = os.getenv("TICKET"),
    }, body)
  end
  next_request = id
  statuses = {}
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + n
    end
  end
  for status, n in pairs(totals) do
    io.write(string.format("status %d: %d\n", status, n))
  end
end
