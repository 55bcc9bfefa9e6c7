local expires = string.format('%.0f', now + tonumber(ARGV[1]))
local args = {}
local back = {}
for i = 5, #ARGV, 2 do
  local nick, m = ARGV[i], ARGV[i + 1]
  local list = true
  if not redis.call('ZSCORE', KEYS[1], nick) then
    if m ~= '' and redis.call('ZREM', KEYS[2], nick) == 1 then
      back[#back + 1] = nick
      redis.call('PUBLISH', KEYS[3], cjson.encode(
        {t='join', room=ARGV[3], nick=nick, o=ARGV[4], m=tonumber(m), r=1}))
    elseif ARGV[2] == 'XX' then
      list = false
    end
  end
  if list then
    args[#args + 1] = expires
    args[#args + 1] = nick
  end
end
if #args > 0 then redis.call('ZADD', KEYS[1], unpack(args)) end
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', 2 * tonumber(ARGV[1])))
return back
