-- POST /v1/tokens/batch with ITEMS (default 1,000) fresh random valid cards per request.
-- Usage: wrk ... -s batch_tokenize.lua URL [-- ITEMS]
-- API key (role checkout) from the environment: BENCH_API_KEY (kept off the command line).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local card = dofile(here .. "card.lua")
local post = dofile(here .. "post.lua")

local items = 1000

function init(args)
  card.seed(thread_id)
  items = tonumber(args[1] or "1000") or 1000
  post.as_client("checkout")
end

function request()
  local bodies = {}
  for i = 1, items do
    bodies[i] = card.body()
  end
  return wrk.format(nil, "/v1/tokens/batch", nil, '{"items":[' .. table.concat(bodies, ",") .. "]}")
end
