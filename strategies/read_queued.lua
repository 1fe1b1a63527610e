-- Clear one conversation and queue the user for a recount of their total.
-- KEYS[1] unread hash, KEYS[2] the recount stream; ARGV[1] conversation id, ARGV[2] the user.
-- Returns how many unread messages were cleared.
local count = tonumber(redis.call("HGET", KEYS[1], ARGV[1]) or "0")
if count ~= 0 then
  redis.call("HDEL", KEYS[1], ARGV[1])
  redis.call("XADD", KEYS[2], "*", "user", ARGV[2])
end
return count
