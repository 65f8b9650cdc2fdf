-- POST /v1/detokenize, one token per request, cycling through pre-created tokens.
-- Usage: wrk ... -s detokenize.lua URL -- TOKENS_FILE   (one token per line)
-- API key (role payment_gateway) from the environment: BENCH_API_KEY.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local post = dofile(here .. "post.lua")

local bodies = {}
local position = 0

function init(args)
  local path = args[1]
  for _, line in ipairs(post.lines(path, "tokens")) do
    bodies[#bodies + 1] = '{"tokens":["' .. line .. '"],"purpose":"payment"}'
  end
  if #bodies == 0 then
    error("no tokens in " .. path)
  end
  -- Threads start at different places in the list so they do not read the same rows in step.
  position = (((thread_id or 1) - 1) * 997) % #bodies
  post.as_client("payment_gateway")
end

function request()
  position = position % #bodies + 1
  return wrk.format(nil, "/v1/detokenize", nil, bodies[position])
end
