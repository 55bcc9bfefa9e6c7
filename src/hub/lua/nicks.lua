local lost = {}
local cur = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do
  local owner = ARGV[i + 2]
  if cur[i] == owner then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  elseif cur[i] then
    lost[#lost + 1] = KEYS[i]
  elseif ARGV[2] == 'claim' then
    redis.call('SET', KEYS[i], owner, 'PX', ARGV[1])
  end
end
return lost
