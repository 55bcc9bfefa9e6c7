if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[4])
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[4])
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', 2 * tonumber(ARGV[2])))
end
return redis.call('PUBLISH', KEYS[2], ARGV[1])
