-- Push viewed content onto sessions' recent lists (KEYS = session:{id}:recent_content).
-- ARGV[1] = cap, ARGV[2] = TTL (s), ARGV[3] = JSON array with one entry per key:
-- the content ids, oldest first and distinct.  Each id is moved to the head (entries
-- stay distinct), the list is capped and its TTL renewed.  Keys of one hash slot per
-- call (all keys in standalone Redis).
local per_key = cjson.decode(ARGV[3])
local cap = tonumber(ARGV[1])
local SLICE = 1000  -- ids per LPUSH (Lua's unpack has a stack limit)
for k = 1, #KEYS do
  local key = KEYS[k]
  local ids = per_key[k]
  for i = 1, #ids do
    redis.call('LREM', key, 0, ids[i])
  end
  local len = 0
  for first = 1, #ids, SLICE do
    len = redis.call('LPUSH', key, unpack(ids, first, math.min(#ids, first + SLICE - 1)))
  end
  if len > cap then
    redis.call('LTRIM', key, 0, cap - 1)
  end
  redis.call('EXPIRE', key, ARGV[2])
end
return 1
