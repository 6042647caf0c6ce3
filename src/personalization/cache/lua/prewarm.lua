-- Login pre-warm: preferences (generation-checked), embedding and one flag value in one call.
-- KEYS[1] preferences, KEYS[2] preferences_gen, KEYS[3] embedding, KEYS[4] feature flag
-- ARGV[1] expected generation, ARGV[2] preferences TTL,
-- ARGV[3] embedding mode: 'set' | 'del' | 'none', ARGV[4] embedding bytes, ARGV[5] embedding TTL,
-- ARGV[6] flag value ('' = none), ARGV[7] flag TTL, ARGV[8..] preference field, value pairs.
-- Returns 1 if the preferences were written, 0 if a change intervened (the next read fills them).
local filled = 0
if (redis.call('GET', KEYS[2]) or '') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 8))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  filled = 1
end
if ARGV[3] == 'set' then
  -- The online learner writes the cache and the durable copy together, so a cached
  -- value is at least as new as the durable one: keep it, only renew its TTL.
  if redis.call('EXPIRE', KEYS[3], ARGV[5]) == 0 then
    redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
  end
elseif ARGV[3] == 'del' then
  redis.call('DEL', KEYS[3])
end
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[7])
end
return filled
