-- Push viewed content onto a session's recent list (KEYS[1] = session:{id}:recent_content).
-- ARGV[1] = cap, ARGV[2] = TTL (s), then content ids oldest first.  Each id is
-- moved to the head (distinct entries), the list capped and its TTL renewed.
for i = 3, #ARGV do
  redis.call('LREM', KEYS[1], 0, ARGV[i])
  redis.call('LPUSH', KEYS[1], ARGV[i])
end
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
