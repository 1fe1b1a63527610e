-- A lock holder's write, unless a holder with a higher token has written
-- since (this one lost its lock: refused, counted in the fence's "refused").
-- KEYS[1] unread hash, KEYS[2] total, KEYS[3] the fence (hash: next, seen, refused);
-- ARGV[1] token, ARGV[2] conversation; ARGV[3], for a clear: the count the holder read
-- (the conversation is cleared and the total lowered by it); absent: a message is counted.
-- Returns 1 if written, 0 if refused.
local seen = tonumber(redis.call("HGET", KEYS[3], "seen") or "0")
if tonumber(ARGV[1]) < seen then
  redis.call("HINCRBY", KEYS[3], "refused", 1)
  return 0
end
redis.call("HSET", KEYS[3], "seen", ARGV[1])
if ARGV[3] then
  redis.call("HDEL", KEYS[1], ARGV[2])
  redis.call("DECRBY", KEYS[2], ARGV[3])
else
  redis.call("HINCRBY", KEYS[1], ARGV[2], 1)
  redis.call("INCRBY", KEYS[2], 1)
end
return 1
