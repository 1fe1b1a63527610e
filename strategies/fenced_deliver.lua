-- Count a message for a lock holder, unless a holder with a higher token
-- has written since (this one lost its lock: refused, counted in "refused").
-- KEYS[1] unread hash, KEYS[2] total, KEYS[3] the fence; ARGV[1] token, ARGV[2] conversation.
-- Returns 1 if written, 0 if refused.
local seen = tonumber(redis.call("HGET", KEYS[3], "seen") or "0")
if tonumber(ARGV[1]) < seen then
  redis.call("HINCRBY", KEYS[3], "refused", 1)
  return 0
end
redis.call("HSET", KEYS[3], "seen", ARGV[1])
redis.call("HINCRBY", KEYS[1], ARGV[2], 1)
redis.call("INCRBY", KEYS[2], 1)
return 1
