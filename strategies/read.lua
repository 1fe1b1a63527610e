-- Clear one conversation and lower the total by what it held, atomically.
-- KEYS[1] unread hash, KEYS[2] total; ARGV[1] conversation id.
-- Returns how many unread messages were cleared.
local count = tonumber(redis.call("HGET", KEYS[1], ARGV[1]) or "0")
if count ~= 0 then
  redis.call("HDEL", KEYS[1], ARGV[1])
  redis.call("DECRBY", KEYS[2], count)
end
return count
