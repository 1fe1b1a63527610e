-- Take the user's lock with a fencing token: a number that grows with every
-- attempt, so a later holder always has a higher one.
-- KEYS[1] the lock, KEYS[2] the user's fence (hash: next, seen, refused);
-- ARGV[1] the lock's TTL in ms. Returns the token, or nil if the lock is held.
local token = redis.call("HINCRBY", KEYS[2], "next", 1)
if redis.call("SET", KEYS[1], token, "NX", "PX", ARGV[1]) then
  return token
end
return false
