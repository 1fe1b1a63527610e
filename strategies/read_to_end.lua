-- Open a conversation whose members keep read positions: show the member
-- what they have not read (the count minus their position), and move their
-- position to the end.
-- KEYS[1] the conversation's message count, KEYS[2] its members' positions;
-- ARGV[1] the member. Returns the count shown.
local count = tonumber(redis.call("GET", KEYS[1]) or "0")
local position = tonumber(redis.call("HGET", KEYS[2], ARGV[1]) or "0")
if position ~= count then
  redis.call("HSET", KEYS[2], ARGV[1], count)
end
return count - position
