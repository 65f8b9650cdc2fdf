-- The peer: OpenBao (or Vault) KV v2 read of one PAN per request, cycling through secrets written before.
-- GET /v1/<MOUNT>/data/<path>
-- Usage: wrk ... -s kv_read.lua URL -- PATHS_FILE [MOUNT]   (one path per line; MOUNT defaults to secret)
-- Token from the environment: BENCH_VAULT_TOKEN (sent as X-Vault-Token).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local post = dofile(here .. "post.lua")

local paths = {}
local position = 0

function init(args)
  local mount = args[2] or "secret"
  for _, line in ipairs(post.lines(args[1], "paths")) do
    paths[#paths + 1] = "/v1/" .. mount .. "/data/" .. line
  end
  if #paths == 0 then
    error("no paths in " .. args[1])
  end
  -- Threads start at different places in the list, as detokenize.lua does with tokens.
  position = (((thread_id or 1) - 1) * 997) % #paths
  post.as_vault_token()
  wrk.method = "GET"
  wrk.headers["Content-Type"] = nil
end

function request()
  position = position % #paths + 1
  return wrk.format("GET", paths[position])
end
