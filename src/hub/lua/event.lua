-- KEYS[4] is this process's set of the room, KEYS[1] the room's leases.
--
-- The room's size, counting the member joining or leaving, is added to the event as
-- "n": every process then agrees whether the room is past its presence limit.
local publish = true
if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[3])
  -- A PART of a nick this process no longer lists: a scan (its lease lapsed) or its
  -- own listing of the room parted it already, and everyone was told.
  if redis.call('SREM', KEYS[4], ARGV[3]) == 0 and ARGV[4] == '' then
    publish = false
  end
end
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[4])
  redis.call('SADD', KEYS[4], ARGV[4])
end
hold_lease(KEYS[1], KEYS[4], ARGV[5], tonumber(ARGV[2]))
if not publish then return 0 end
-- A PART's member is counted as it was before leaving.
local n = room_size(KEYS[1], ARGV[6])
if ARGV[4] == '' then n = n + 1 end
-- ARGV[1] is one JSON object (serde's): the count goes in before its closing brace.
local ev = ARGV[1]
if n > 0 and string.sub(ev, -1) == '}' then
  ev = string.sub(ev, 1, -2) .. ',"n":' .. n .. '}'
end
return redis.call('PUBLISH', KEYS[2], ev)
