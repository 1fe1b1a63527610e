-- Count one unread message for one recipient, atomically.
-- KEYS[1] unread hash, KEYS[2] total; ARGV[1] conversation id.
redis.call("HINCRBY", KEYS[1], ARGV[1], 1)
return redis.call("INCRBY", KEYS[2], 1)
