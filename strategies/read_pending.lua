-- Clear one conversation, counted and still buffered, and lower the total by the counted part, atomically.
-- KEYS[1] unread hash, KEYS[2] total, KEYS[3] pending hash; ARGV[1] conversation id.
-- Returns how many unread messages were cleared.
local counted = tonumber(redis.call("HGET", KEYS[1], ARGV[1]) or "0")
local pending = tonumber(redis.call("HGET", KEYS[3], ARGV[1]) or "0")
if counted ~= 0 then
  redis.call("HDEL", KEYS[1], ARGV[1])
  redis.call("DECRBY", KEYS[2], counted)
end
if pending ~= 0 then
  redis.call("HDEL", KEYS[3], ARGV[1])
end
return counted + pending
