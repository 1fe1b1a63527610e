-- Fold what a user's buffer in Redis holds into their counters, atomically.
-- KEYS[1] pending hash, KEYS[2] unread hash, KEYS[3] total.
-- Returns how many unread messages it moved.
local pending = redis.call("HGETALL", KEYS[1])
local moved = 0
for i = 1, #pending, 2 do
  local count = tonumber(pending[i + 1])
  redis.call("HINCRBY", KEYS[2], pending[i], count)
  moved = moved + count
end
if moved ~= 0 then
  redis.call("INCRBY", KEYS[3], moved)
end
redis.call("DEL", KEYS[1])
return moved
