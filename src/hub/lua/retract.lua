local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur >= tonumber(ARGV[1]) then return 0 end
return redis.call('XDEL', KEYS[1], ARGV[1] .. '-0')
