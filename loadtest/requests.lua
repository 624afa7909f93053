-- wrk script: sends prepared requests round-robin from a file, one a line:
--   METHOD <tab> PATH <tab> HEADER-NAME <tab> HEADER-VALUE <tab> BODY
-- (the header is the token or the signature). Counts answers by status.
--   REQUESTS=file wrk -t2 -c64 -d10s -s loadtest/requests.lua http://127.0.0.1:PORT

local lines = {}
for line in io.lines(os.getenv("REQUESTS")) do
  lines[#lines + 1] = line
end
local threads = {}
local thread_id = 0

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

-- Formatted once here, so that wrk's own work stays small.
function init(args)
  requests = {}
  for i, line in ipairs(lines) do
    local method, path, name, value, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    requests[i] = wrk.format(method, path, { [name] = value, ["Content-Type"] = "application/json" }, body)
  end
  -- Threads start at different places, so each request is sent once
  -- before any is sent again (while the run is shorter than the list).
  next_request = math.floor(#requests * id / 2)
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
