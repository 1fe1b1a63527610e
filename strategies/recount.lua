-- Set a user's total to the sum of their conversation counts.
-- KEYS[1] unread hash, KEYS[2] total. Returns the total.
local sum = 0
for _, count in ipairs(redis.call("HVALS", KEYS[1])) do
  sum = sum + tonumber(count)
end
redis.call("SET", KEYS[2], sum)
return sum
