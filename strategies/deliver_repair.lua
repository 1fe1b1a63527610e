-- deliver.lua, then repair: when the user has few conversations, recompute
-- the total from the per-conversation hash and overwrite it.
-- KEYS[1] unread hash, KEYS[2] total; ARGV[1] conversation id,
-- ARGV[2] most conversations to repair. Returns the total's correction.
redis.call("HINCRBY", KEYS[1], ARGV[1], 1)
local total = redis.call("INCRBY", KEYS[2], 1)
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
