redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%.0f', now))
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if #gone > 0 then
  local keep = string.format('%.0f', now + tonumber(ARGV[2]))
  -- Each PART carries the room's size counting the member leaving (as event.lua's).
  local size = redis.call('ZCARD', KEYS[1])
  for _, n in ipairs(gone) do
    redis.call('ZREM', KEYS[1], n)
    redis.call('ZADD', KEYS[3], keep, n)
    redis.call('PUBLISH', KEYS[2], cjson.encode({t='part', room=ARGV[1], nick=n, x=1, n=size}))
    size = size - 1
  end
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
return gone
