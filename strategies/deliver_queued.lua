-- Count one unread message for one recipient and queue the recipient for a recount of their total.
-- KEYS[1] unread hash, KEYS[2] the recount stream; ARGV[1] conversation id, ARGV[2] the recipient.
redis.call("HINCRBY", KEYS[1], ARGV[1], 1)
return redis.call("XADD", KEYS[2], "*", "user", ARGV[2])
