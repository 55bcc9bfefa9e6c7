local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[6]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran the message')
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
local id = string.format('%.0f', redis.call('INCR', KEYS[1]))
local ev = cjson.encode({t='msg', room=ARGV[2], id=id, nick=ARGV[3], text=ARGV[4], o=ARGV[5], m=tonumber(ARGV[7]), ms=now})
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id .. '-0', 'e', ev)
if ARGV[8] == '1' then
  redis.call('PUBLISH', KEYS[3], ev)
  redis.call('SET', KEYS[4], id)
elseif redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('SET', KEYS[4], string.format('%.0f', tonumber(id) - 1))
end
return id
