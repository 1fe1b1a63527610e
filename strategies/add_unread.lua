-- Count a batch of unread messages of one conversation for one recipient, atomically.
-- KEYS[1] unread hash, KEYS[2] total; ARGV[1] conversation id, ARGV[2] how many.
redis.call("HINCRBY", KEYS[1], ARGV[1], ARGV[2])
return redis.call("INCRBY", KEYS[2], ARGV[2])
