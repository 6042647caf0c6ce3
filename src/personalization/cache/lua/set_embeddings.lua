-- SET every KEYS[i] (user:{id}:embedding) to ARGV[i + 1] with the TTL ARGV[1] (seconds).
-- One call per batch chunk instead of one command per user: the learner writes thousands
-- of users per batch.  The caller sends keys of one hash slot per call (all keys in
-- standalone Redis), so the script is valid in Redis Cluster too.
local ttl = ARGV[1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
end
return #KEYS
