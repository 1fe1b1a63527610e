-- lua_repair: apply one change (a delivery or a read) like deliver.lua or
-- read.lua, then, when the user has few conversations, recompute the total
-- from the per-conversation hash and overwrite it.
-- KEYS[1] unread hash, KEYS[2] total; ARGV[1] conversation id,
-- ARGV[2] "deliver" or "read", ARGV[3] most conversations to repair.
-- Returns, for a read, how many unread messages were cleared (the count
-- the user is shown); for a delivery, the correction made to the total.
local total
local cleared = 0
if ARGV[2] == "deliver" then
  redis.call("HINCRBY", KEYS[1], ARGV[1], 1)
  total = redis.call("INCRBY", KEYS[2], 1)
else
  cleared = tonumber(redis.call("HGET", KEYS[1], ARGV[1]) or "0")
  if cleared ~= 0 then
    redis.call("HDEL", KEYS[1], ARGV[1])
  end
  total = redis.call("DECRBY", KEYS[2], cleared)
end
local correction = 0
if redis.call("HLEN", KEYS[1]) <= tonumber(ARGV[3]) then
  local sum = 0
  for _, value in ipairs(redis.call("HVALS", KEYS[1])) do
    sum = sum + tonumber(value)
  end
  if sum ~= total then
    redis.call("SET", KEYS[2], sum)
  end
  correction = sum - total
end
if ARGV[2] == "read" then
  return cleared
end
return correction
