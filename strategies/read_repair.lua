-- read.lua, then the same repair as deliver_repair.lua.
-- KEYS[1] unread hash, KEYS[2] total; ARGV[1] conversation id,
-- ARGV[2] most conversations to repair. Returns the total's correction.
local count = tonumber(redis.call("HGET", KEYS[1], ARGV[1]) or "0")
if count ~= 0 then
  redis.call("HDEL", KEYS[1], ARGV[1])
end
local total = redis.call("DECRBY", KEYS[2], count)
if redis.call("HLEN", KEYS[1]) > tonumber(ARGV[2]) then
  return 0
end
local sum = 0
for _, value in ipairs(redis.call("HVALS", KEYS[1])) do
  sum = sum + tonumber(value)
end
if sum ~= total then
  redis.call("SET", KEYS[2], sum)
end
return sum - total
