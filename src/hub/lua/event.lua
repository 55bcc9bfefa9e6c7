-- A room's presence is one set of nicks per process (KEYS[4] is this process's) and
-- the processes' leases in the room (KEYS[1], scored by when each lapses).
--
-- The room's size: the nicks every process lists there (one whose lease lapsed too,
-- until a scan parts its members), added to the event as "n", counting the member
-- joining or leaving: every process then agrees whether the room is past its presence
-- limit.
local function size()
  local n = 0
  for _, i in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    n = n + redis.call('SCARD', ARGV[6] .. i)
  end
  return n
end
local n = 0
local publish = true
if ARGV[3] ~= '' then
  n = size()
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
  n = size()
end
local life = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + life), ARGV[5])
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', 2 * life))
  redis.call('PEXPIRE', KEYS[4], string.format('%.0f', 2 * life))
else
  redis.call('ZREM', KEYS[1], ARGV[5])
end
if not publish then return 0 end
-- ARGV[1] is one JSON object (serde's): the count goes in before its closing brace.
local ev = ARGV[1]
if n > 0 and string.sub(ev, -1) == '}' then
  ev = string.sub(ev, 1, -2) .. ',"n":' .. n .. '}'
end
return redis.call('PUBLISH', KEYS[2], ev)
