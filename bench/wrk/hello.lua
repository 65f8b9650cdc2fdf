-- The ceiling: POST the same card-shaped JSON as tokenize.lua to the hello-world app (bench/hello_app.py).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local card = dofile(here .. "card.lua")

function init(args)
  card.seed(thread_id)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  return wrk.format(nil, "/echo", nil, card.body())
end
