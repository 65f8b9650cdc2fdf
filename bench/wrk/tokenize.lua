-- POST /v1/tokens with a fresh random valid card per request.
-- API key (role checkout) from the environment: BENCH_API_KEY (kept off the command line).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local card = dofile(here .. "card.lua")

function init(args)
  card.seed(thread_id)
  local key = os.getenv("BENCH_API_KEY")
  if key == nil or key == "" then
    error("set BENCH_API_KEY to a checkout client's API key")
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
end

function request()
  return wrk.format(nil, "/v1/tokens", nil, card.body())
end
