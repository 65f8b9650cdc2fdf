-- POST /v1/tokens with a fresh random valid card per request, a new connection for each
-- (`Connection: close`): the client that does not keep connections alive, next to tokenize.lua's
-- keep-alive connections (wrk reuses each connection for as long as the server keeps it open).
-- API key (role checkout) from the environment: BENCH_API_KEY.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local card = dofile(here .. "card.lua")
local post = dofile(here .. "post.lua")

function init(args)
  card.seed(thread_id)
  post.as_client("checkout")
  wrk.headers["Connection"] = "close"
end

function request()
  return wrk.format(nil, "/v1/tokens", nil, card.body())
end
