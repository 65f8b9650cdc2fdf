-- Shared by the bench scripts: POST JSON with a secret header taken from the environment (never the
-- command line), and the non-empty lines of a file.

local post = {}

function post.json_with(header, value_prefix, variable, who)
  local secret = os.getenv(variable)
  if secret == nil or secret == "" then
    error("set " .. variable .. " to " .. who)
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers[header] = value_prefix .. secret
end

-- Bearer API key of a vault client (BENCH_API_KEY).
function post.as_client(role)
  post.json_with("Authorization", "Bearer ", "BENCH_API_KEY", "a " .. role .. " client's API key")
end

-- OpenBao / Vault token (BENCH_VAULT_TOKEN).
function post.as_vault_token()
  post.json_with("X-Vault-Token", "", "BENCH_VAULT_TOKEN", "an OpenBao token")
end

function post.lines(path, what)
  if path == nil then
    error("pass the " .. what .. " file after --")
  end
  local out = {}
  for line in io.lines(path) do
    if line ~= "" then
      out[#out + 1] = line
    end
  end
  return out
end

return post
