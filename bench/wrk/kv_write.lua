-- The peer: OpenBao (or Vault) KV v2 write of one random PAN per request, each to a new path.
-- POST /v1/<MOUNT>/data/bench/<thread>-<n>-<random> {"data": {"pan": PAN}}
-- Usage: wrk ... -s kv_write.lua URL [-- MOUNT]   (MOUNT defaults to secret, the dev server's KV v2)
-- Token from the environment: BENCH_VAULT_TOKEN (sent as X-Vault-Token).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local card = dofile(here .. "card.lua")
local post = dofile(here .. "post.lua")

local prefix = nil
local counter = 0

function init(args)
  card.seed(thread_id)
  prefix = string.format("/v1/%s/data/bench/%d-%08x-", args[1] or "secret", thread_id or 0,
                         math.random(0, 0x7fffffff))
  post.as_vault_token()
end

function request()
  counter = counter + 1
  return wrk.format(nil, prefix .. counter, nil, '{"data":{"pan":"' .. card.pan() .. '"}}')
end
