-- Clear a conversation the holder read as ARGV[3] unread, unless a holder
-- with a higher token has written since (refused, counted in "refused").
-- KEYS[1] unread hash, KEYS[2] total, KEYS[3] the fence; ARGV[1] token,
-- ARGV[2] conversation, ARGV[3] the count read. Returns 1 if written, 0 if refused.
local seen = tonumber(redis.call("HGET", KEYS[3], "seen") or "0")
if tonumber(ARGV[1]) < seen then
  redis.call("HINCRBY", KEYS[3], "refused", 1)
  return 0
end
redis.call("HSET", KEYS[3], "seen", ARGV[1])
redis.call("HDEL", KEYS[1], ARGV[2])
redis.call("DECRBY", KEYS[2], ARGV[3])
return 1
