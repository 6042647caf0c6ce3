-- Fill a preferences snapshot only if no change happened since the reader looked.
-- KEYS[1] user:{id}:preferences, KEYS[2] user:{id}:preferences_gen
-- ARGV[1] generation read before the database read ('' = none), ARGV[2] TTL (s),
-- ARGV[3..] field, value pairs.  Returns 1 if written, 0 if a write intervened.
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
