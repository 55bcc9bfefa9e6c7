-- Parts the members of the processes whose lease in the room lapsed. KEYS: the
-- room's leases, channel, parted set, evicted processes. ARGV: room, how long a parted
-- nick (and an evicted process) is kept (ms), the prefix of the room's sets.
local t = string.format('%.0f', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', t)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', t)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t)
if #dead == 0 then return {} end
-- Each PART carries the room's size counting the member leaving (as event.lua's).
local size = room_size(KEYS[1], ARGV[3])
local live = live_processes(KEYS[1])
local keep = string.format('%.0f', now + tonumber(ARGV[2]))
local gone = {}
for _, i in ipairs(dead) do
  local set = ARGV[3] .. i
  for _, n in ipairs(redis.call('SMEMBERS', set)) do
    -- A nick a live process lists too (a member that took it after this one went)
    -- has not left.
    if not listed_elsewhere(live, ARGV[3], i, n) then
      gone[#gone + 1] = n
      redis.call('ZADD', KEYS[3], keep, n)
      redis.call('PUBLISH', KEYS[2], cjson.encode({t='part', room=ARGV[1], nick=n, x=1, n=size}))
    end
    size = size - 1
  end
  redis.call('DEL', set)
  redis.call('ZREM', KEYS[1], i)
  redis.call('ZADD', KEYS[4], keep, i)
end
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[2])
return gone
