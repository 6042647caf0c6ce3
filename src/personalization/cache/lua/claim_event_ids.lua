-- Claim client event ids in one user's signals set (KEYS[1] = user:{id}:signals).
-- ARGV[1] = window floor (epoch s; older entries are trimmed), ARGV[2] = TTL (s),
-- then pairs of (score, member).  Returns one 1 (new) or 0 (replay) per pair.
local out = {}
for i = 3, #ARGV, 2 do
  out[#out + 1] = redis.call('ZADD', KEYS[1], 'NX', ARGV[i], ARGV[i + 1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return out
