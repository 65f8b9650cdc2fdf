-- The peer: OpenBao (or Vault) Transit encrypt of one random PAN per request.
-- POST /v1/<MOUNT>/encrypt/<KEY> {"plaintext": base64(PAN)}
-- Usage: wrk ... -s transit_encrypt.lua URL -- KEY [MOUNT]   (MOUNT defaults to transit)
-- Token from the environment: BENCH_VAULT_TOKEN (sent as X-Vault-Token).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local card = dofile(here .. "card.lua")
local post = dofile(here .. "post.lua")

local path = nil
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(text)
  local out = {}
  for i = 1, #text, 3 do
    local a, b, c = text:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = {}
    for j = 1, 4 do
      local index = math.floor(n / 64 ^ (4 - j)) % 64
      chars[j] = alphabet:sub(index + 1, index + 1)
    end
    if b == nil then chars[3] = "=" end
    if c == nil then chars[4] = "=" end
    out[#out + 1] = table.concat(chars)
  end
  return table.concat(out)
end

function init(args)
  card.seed(thread_id)
  local key = args[1]
  if key == nil then
    error("pass the Transit key name after --")
  end
  path = "/v1/" .. (args[2] or "transit") .. "/encrypt/" .. key
  post.as_vault_token()
end

function request()
  return wrk.format(nil, path, nil, '{"plaintext":"' .. base64(card.pan()) .. '"}')
end
