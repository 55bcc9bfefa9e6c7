local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- What the presence scripts share. A room's presence is one set of nicks per process
-- with members there (its name: the room's prefix, then the process's id) and the
-- room's leases: a sorted set of those processes, scored by when each one's lapses.

-- The room's size: the nicks every process lists there (one whose lease lapsed too,
-- until a scan parts its members).
local function room_size(leases, prefix)
  local n = 0
  for _, i in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
    n = n + redis.call('SCARD', prefix .. i)
  end
  return n
end

-- Starts `process`'s lease in the room again, for `life` ms, while its set lists a
-- member; ends it when the set is empty.
local function hold_lease(leases, set, process, life)
  if redis.call('EXISTS', set) == 1 then
    redis.call('ZADD', leases, string.format('%.0f', now + life), process)
    redis.call('PEXPIRE', leases, string.format('%.0f', 2 * life))
    redis.call('PEXPIRE', set, string.format('%.0f', 2 * life))
  else
    redis.call('ZREM', leases, process)
  end
end

-- The processes whose lease in the room holds.
local function live_processes(leases)
  return redis.call('ZRANGEBYSCORE', leases, '(' .. string.format('%.0f', now), '+inf')
end

-- Whether a process of `live` other than `process` lists `nick` in the room (a member
-- that took the nick after the one that left).
local function listed_elsewhere(live, prefix, process, nick)
  for _, l in ipairs(live) do
    if l ~= process and redis.call('SISMEMBER', prefix .. l, nick) == 1 then
      return true
    end
  end
  return false
end

if now > tonumber(ARGV[6]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran the message')
end
-- The author's listing (ARGV[7] names a member): a scan that parted it (its process's
-- lease lapsed: Redis hung, or a renewal came late) told every process it left; it is
-- listed again and its JOIN published before its message, as presence.lua would, so
-- nobody reads a message from a member it was told had left. The process's other
-- members of the room wait for its renewal, which finds the process evicted and
-- lists them all.
if ARGV[7] ~= '' and redis.call('ZREM', KEYS[5], ARGV[3]) == 1
    and redis.call('SADD', KEYS[6], ARGV[3]) == 1 then
  hold_lease(KEYS[7], KEYS[6], ARGV[5], tonumber(ARGV[9]))
  redis.call('PUBLISH', KEYS[3], cjson.encode(
    {t='join', room=ARGV[2], nick=ARGV[3], o=ARGV[5], m=tonumber(ARGV[7]), r=1}))
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
