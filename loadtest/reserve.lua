-- wrk script: POST reserve as many different shoppers, round-robin over a
-- file of tokens (one JWT a line). Counts answers by status.
--   wrk -t2 -c64 -d10s -s loadtest/reserve.lua http://127.0.0.1:PORT
-- Env: TOKENS (file), DROP, SKU.

local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do
  tokens[#tokens + 1] = line
end
local path = "/api/v1/drops/" .. os.getenv("DROP") .. "/reserve"
local body = '{"sku": "' .. os.getenv("SKU") .. '", "quantity": 1}'
local threads = {}
local thread_id = 0

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  next_token = id
  statuses = {}
end

function request()
  next_token = next_token % #tokens + 1
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. tokens[next_token],
    ["Content-Type"] = "application/json",
  }, body)
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
