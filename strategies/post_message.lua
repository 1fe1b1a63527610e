-- Count one message in a conversation whose members keep read positions:
-- one more message, and the sender's position past it (their own message
-- is not unread to them). Both keys carry the conversation's hash tag.
-- KEYS[1] the conversation's message count, KEYS[2] its members' positions;
-- ARGV[1] the sender. Returns the conversation's message count.
redis.call("HINCRBY", KEYS[2], ARGV[1], 1)
return redis.call("INCR", KEYS[1])
