-- Claim client event ids in one user's signals set (KEYS[1] = user:{id}:signals).
-- ARGV[1] = window floor (epoch s; older entries are trimmed), ARGV[2] = TTL (s),
-- ARGV[3] = JSON array of [score, member] pairs (one argument instead of two per
-- event keeps the client's command packing cheap).
-- Returns one 1 (new) or 0 (replay) per pair.
local pairs_ = cjson.decode(ARGV[3])
local out = {}
for i = 1, #pairs_ do
  out[i] = redis.call('ZADD', KEYS[1], 'NX', pairs_[i][1], pairs_[i][2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return out
