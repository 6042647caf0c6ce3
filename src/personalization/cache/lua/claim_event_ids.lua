-- Claim client event ids in users' signals sets (KEYS = user:{id}:signals, one per user).
-- ARGV[1] = window floor (epoch s; older entries are trimmed), ARGV[2] = TTL (s),
-- ARGV[3] = JSON array with one entry per key: an array of [score, member] pairs.
-- Returns, key by key and pair by pair, 1 (new) or 0 (replay).
-- The caller sends keys of one hash slot per call (all keys in standalone Redis),
-- so the script is valid in Redis Cluster too.
local per_key = cjson.decode(ARGV[3])
local out = {}
for k = 1, #KEYS do
  local pairs_ = per_key[k]
  for i = 1, #pairs_ do
    out[#out + 1] = redis.call('ZADD', KEYS[k], 'NX', pairs_[i][1], pairs_[i][2])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. ARGV[1])
  redis.call('EXPIRE', KEYS[k], ARGV[2])
end
return out
