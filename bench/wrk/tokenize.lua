-- POST /v1/tokens with a fresh random valid card per request.
-- API key (role checkout) from the environment: BENCH_API_KEY (kept off the command line).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local card = dofile(here .. "card.lua")
local post = dofile(here .. "post.lua")

function init(args)
  card.seed(thread_id)
  post.as_client("checkout")
end

function request()
  return wrk.format(nil, "/v1/tokens", nil, card.body())
end
