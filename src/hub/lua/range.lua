local cur = redis.call('GET', KEYS[2])
local hi = cur and (cur .. '-0') or '+'
if ARGV[1] ~= '' then return redis.call('XRANGE', KEYS[1], '(' .. ARGV[1] .. '-0', hi) end
return redis.call('XREVRANGE', KEYS[1], hi, '-', 'COUNT', ARGV[2])
