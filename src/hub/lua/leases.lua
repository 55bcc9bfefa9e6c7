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

