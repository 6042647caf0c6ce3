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
local nout = 0
for k = 1, #KEYS do
  local key = KEYS[k]
  local flat = per_key[k]
  local n = #flat / 2
  if n == 1 then
    nout = nout + 1
    out[nout] = redis.call('ZADD', key, 'NX', flat[1], flat[2])
  else
    for first = 1, n, SLICE do
      local last = math.min(n, first + SLICE - 1)
      local members = {}
      for i = first, last do members[i - first + 1] = flat[2 * i] end
      local scores = redis.call('ZMSCORE', key, unpack(members))
      local replays = 0
      for j = 1, #members do
        if scores[j] then replays = replays + 1 end
      end
      if replays == 0 then
        -- The usual case: every id is new, add the pairs as they came.
        redis.call('ZADD', key, 'NX', unpack(flat, 2 * first - 1, 2 * last))
        for j = 1, #members do out[nout + j] = 1 end
        nout = nout + #members
      else
        local args = {}
        local nargs = 0
        for j = 1, #members do
          nout = nout + 1
          if scores[j] then
            out[nout] = 0
          else
            out[nout] = 1
            local i = first + j - 1
            args[nargs + 1] = flat[2 * i - 1]
            args[nargs + 2] = flat[2 * i]
            nargs = nargs + 2
          end
        end
        if nargs > 0 then
          redis.call('ZADD', key, 'NX', unpack(args))
        end
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[1])
  redis.call('EXPIRE', key, ARGV[2])
end
return out
