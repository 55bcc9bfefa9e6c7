-- Lists this process's members of one room: its set (KEYS[4]) becomes exactly them,
-- and its lease in the room (KEYS[1]) starts again. ARGV: lease (ms), room, this
-- process's id, the prefix of the room's sets, then pairs of nick and member id (empty
-- while its JOIN has not come back: kept if listed, not listed by this).
local listed, back = {}, {}
for i = 5, #ARGV, 2 do
  local nick, m = ARGV[i], ARGV[i + 1]
  listed[nick] = true
  if m ~= '' and redis.call('SADD', KEYS[4], nick) == 1
      and redis.call('ZREM', KEYS[2], nick) == 1 then
    -- Parted by a scan while it was still here: listed again, its JOIN published.
    back[#back + 1] = nick
    redis.call('PUBLISH', KEYS[3], cjson.encode(
      {t='join', room=ARGV[2], nick=nick, o=ARGV[3], m=tonumber(m), r=1}))
  end
end
-- Listed here but gone from this process (its PART was lost: Redis was down, or the
-- room's master was failing over): parted everywhere now (unless a member elsewhere
-- has taken the nick since), each PART carrying the room's size counting the member
-- leaving (as event.lua's).
local stale = {}
for _, nick in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if not listed[nick] then stale[#stale + 1] = nick end
end
if #stale > 0 then
  local size = room_size(KEYS[1], ARGV[4])
  local live = live_processes(KEYS[1])
  for _, nick in ipairs(stale) do
    redis.call('SREM', KEYS[4], nick)
    if not listed_elsewhere(live, ARGV[4], ARGV[3], nick) then
      redis.call('PUBLISH', KEYS[3], cjson.encode({t='part', room=ARGV[2], nick=nick, x=1, n=size}))
    end
    size = size - 1
  end
end
redis.call('ZREM', KEYS[5], ARGV[3])
hold_lease(KEYS[1], KEYS[4], ARGV[3], tonumber(ARGV[1]))
return {back, stale}
