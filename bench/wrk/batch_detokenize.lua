-- POST /v1/detokenize with ITEMS (default 1,000) tokens per request, purpose payment, cycling through
-- consecutive windows of the pre-created tokens.
-- Usage: wrk ... -s batch_detokenize.lua URL -- TOKENS_FILE [ITEMS]   (one token per line)
-- API key (role payment_gateway) from the environment: BENCH_API_KEY.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local post = dofile(here .. "post.lua")

local bodies = {}
local position = 0

function init(args)
  local path = args[1]
  local items = tonumber(args[2] or "1000") or 1000
  local tokens = {}
  for _, line in ipairs(post.lines(path, "tokens")) do
    tokens[#tokens + 1] = '"' .. line .. '"'
  end
  if #tokens < items then
    error(string.format("need at least %d tokens in %s, found %d", items, path, #tokens))
  end
  -- One body per full window of `items` consecutive tokens.
  for start = 1, #tokens - items + 1, items do
    local window = {}
    for i = start, start + items - 1 do
      window[#window + 1] = tokens[i]
    end
    bodies[#bodies + 1] = '{"tokens":[' .. table.concat(window, ",") .. '],"purpose":"payment"}'
  end
  -- Threads start at different windows so they do not read the same rows in step.
  position = ((thread_id or 1) - 1) % #bodies
  post.as_client("payment_gateway")
end

function request()
  position = position % #bodies + 1
  return wrk.format(nil, "/v1/detokenize", nil, bodies[position])
end
