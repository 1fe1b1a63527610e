-- deliver.lua, applied at most once per (message, recipient): a dedup key set
-- in the same script makes a retried delivery a no-op.
-- KEYS[1] unread hash, KEYS[2] total, KEYS[3] dedup key;
-- ARGV[1] conversation id, ARGV[2] dedup key lifetime in seconds.
-- Returns 1 if counted now, 0 if it had been counted before.
if not redis.call("SET", KEYS[3], "1", "NX", "EX", ARGV[2]) then
  return 0
end
redis.call("HINCRBY", KEYS[1], ARGV[1], 1)
redis.call("INCRBY", KEYS[2], 1)
return 1
