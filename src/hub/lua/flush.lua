local cur = redis.call('GET', KEYS[2]) or '0'
if tonumber(cur) >= tonumber(ARGV[1]) then return {} end
local es = redis.call('XRANGE', KEYS[1], '(' .. cur .. '-0', ARGV[1] .. '-0')
local stale = {}
for _, e in ipairs(es) do
  local ev = e[2][2]
  if tonumber(cjson.decode(ev).ms) + tonumber(ARGV[2]) < now then
    redis.call('XDEL', KEYS[1], e[1])
    stale[#stale + 1] = e[1]
  else
    redis.call('PUBLISH', KEYS[3], ev)
  end
end
redis.call('SET', KEYS[2], ARGV[1])
return stale
