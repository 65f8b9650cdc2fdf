-- A random, Luhn-valid 16-digit Visa-range PAN and a tokenize body for it, built in Lua
-- so every request carries a different card (no deterministic-token shortcut).

local card = {}

local function luhn_check_digit(payload)
  -- payload: digits without the check digit; double every second digit from the right.
  local sum, double = 0, true
  for i = #payload, 1, -1 do
    local d = payload:byte(i) - 48
    if double then
      d = d * 2
      if d > 9 then d = d - 9 end
    end
    sum = sum + d
    double = not double
  end
  return (10 - sum % 10) % 10
end

function card.pan()
  local digits = { "4" }
  for i = 2, 15 do
    digits[i] = string.char(48 + math.random(0, 9))
  end
  local payload = table.concat(digits)
  return payload .. luhn_check_digit(payload)
end

card.exp_year = tonumber(os.date("!%Y")) + 3

function card.body()
  return string.format('{"kind":"card","value":{"pan":"%s","exp_month":12,"exp_year":%d}}',
                       card.pan(), card.exp_year)
end

function card.seed(thread_id)
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919 + math.floor((os.clock() * 1e6) % 1000))
  for _ = 1, 10 do math.random() end
end

return card
