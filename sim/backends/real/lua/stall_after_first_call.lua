-- countdrift (mid_script_power_loss): prepended to a strategy's script, so
-- that the script holds the server for __stall_ms right after its first
-- redis.call; the strategy's own text follows unchanged and sees this
-- wrapper as `redis`.
local __redis, __stalled = redis, false
local function __stall()
  if __stalled then return end
  __stalled = true
  local t = __redis.call("TIME")
  local stop = tonumber(t[1]) * 1000000 + tonumber(t[2]) + __stall_ms * 1000
  repeat t = __redis.call("TIME") until tonumber(t[1]) * 1000000 + tonumber(t[2]) >= stop
end
local redis = setmetatable({
  call = function(...) local reply = __redis.call(...) __stall() return reply end,
  pcall = function(...) local reply = __redis.pcall(...) __stall() return reply end,
}, {__index = __redis})
