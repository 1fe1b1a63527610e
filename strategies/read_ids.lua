-- Remove every unread message id of one conversation from the user's id set.
-- KEYS[1] hash of unread message id -> conversation id; ARGV[1] conversation.
-- Returns how many ids were removed.
local flat = redis.call("HGETALL", KEYS[1])
local removed = 0
for i = 1, #flat, 2 do
  if flat[i + 1] == ARGV[1] then
    redis.call("HDEL", KEYS[1], flat[i])
    removed = removed + 1
  end
end
return removed
