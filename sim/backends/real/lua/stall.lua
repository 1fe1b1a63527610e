-- countdrift (mid_script_power_loss): hold the server for ARGV[1] ms, writing
-- nothing, so that a power cut lands while the server is busy here.
local function now_us()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local stop = now_us() + tonumber(ARGV[1]) * 1000
while now_us() < stop do end
return false
