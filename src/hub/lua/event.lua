-- The room's size counting the member joining or leaving (the presence set's count
-- before a PART unlists it, after a JOIN lists it), added to the event as "n": every
-- process then agrees whether the room is past its presence limit.
local n = 0
if ARGV[3] ~= '' then
  n = redis.call('ZCARD', KEYS[1])
  redis.call('ZREM', KEYS[1], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[4])
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[4])
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', 2 * tonumber(ARGV[2])))
  n = redis.call('ZCARD', KEYS[1])
end
-- ARGV[1] is one JSON object (serde's): the count goes in before its closing brace.
local ev = ARGV[1]
if n > 0 and string.sub(ev, -1) == '}' then
  ev = string.sub(ev, 1, -2) .. ',"n":' .. n .. '}'
end
return redis.call('PUBLISH', KEYS[2], ev)
