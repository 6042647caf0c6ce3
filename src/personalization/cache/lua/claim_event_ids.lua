-- Claim client event ids in users' signals sets (KEYS = user:{id}:signals, one per user).
-- ARGV[1] = window floor (epoch s; older entries are trimmed), ARGV[2] = TTL (s),
-- ARGV[3] = JSON array with one entry per key: a flat array score1, member1, score2, member2, ...
-- (members distinct within a key).
-- Returns, key by key and pair by pair, 1 (new) or 0 (replay).
-- A key with several ids asks ZMSCORE which exist, then adds the new ones with one ZADD NX
-- (a few commands per key instead of one per id).
-- The caller sends keys of one hash slot per call (all keys in standalone Redis),
-- so the script is valid in Redis Cluster too.
local per_key = cjson.decode(ARGV[3])
local SLICE = 1000  -- pairs per command (Lua's unpack has a stack limit)
local out = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  local flat = per_key[k]
  local n = #flat / 2
  if n == 1 then
    out[#out + 1] = redis.call('ZADD', key, 'NX', flat[1], flat[2])
  else
    for first = 1, n, SLICE do
      local last = math.min(n, first + SLICE - 1)
      local members = {}
      for i = first, last do members[#members + 1] = flat[2 * i] end
      local scores = redis.call('ZMSCORE', key, unpack(members))
      local args = {}
      for j = 1, #members do
        if scores[j] then
          out[#out + 1] = 0
        else
          out[#out + 1] = 1
          local i = first + j - 1
          args[#args + 1] = flat[2 * i - 1]
          args[#args + 1] = flat[2 * i]
        end
      end
      if #args > 0 then
        redis.call('ZADD', key, 'NX', unpack(args))
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[1])
  redis.call('EXPIRE', key, ARGV[2])
end
return out
