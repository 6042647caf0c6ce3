-- Publish a monotonic version: never move it backwards (two rule changes may publish out of order).
-- KEYS[1] version key; ARGV[1] version, ARGV[2] TTL (s).  Returns the version now stored.
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local new = tonumber(ARGV[1])
if new > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return new
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return cur
