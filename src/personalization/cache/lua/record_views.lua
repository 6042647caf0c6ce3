-- Push viewed content onto sessions' recent lists (KEYS = session:{id}:recent_content).
-- ARGV[1] = cap, ARGV[2] = TTL (s), ARGV[3] = JSON array with one entry per key:
-- the content ids, oldest first.  Each id is moved to the head (entries stay
-- distinct), the list is capped and its TTL renewed.  Keys of one hash slot per
-- call (all keys in standalone Redis).
local per_key = cjson.decode(ARGV[3])
local cap = tonumber(ARGV[1])
for k = 1, #KEYS do
  local ids = per_key[k]
  for i = 1, #ids do
    redis.call('LREM', KEYS[k], 0, ids[i])
    redis.call('LPUSH', KEYS[k], ids[i])
  end
  redis.call('LTRIM', KEYS[k], 0, cap - 1)
  redis.call('EXPIRE', KEYS[k], ARGV[2])
end
return 1
