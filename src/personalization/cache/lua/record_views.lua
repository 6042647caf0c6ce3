-- Push viewed content onto a session's recent list (KEYS[1] = session:{id}:recent_content).
-- ARGV[1] = cap, ARGV[2] = TTL (s), ARGV[3] = JSON array of content ids, oldest
-- first.  Each id is moved to the head (entries stay distinct), the list is
-- capped and its TTL renewed.
local ids = cjson.decode(ARGV[3])
for i = 1, #ids do
  redis.call('LREM', KEYS[1], 0, ids[i])
  redis.call('LPUSH', KEYS[1], ids[i])
end
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
