-- Renews this process's lease in a room: one command per room, whatever its members.
-- KEYS: the room's leases, this process's set, the room's evicted processes. ARGV:
-- lease (ms), this process's id. Answers 1, renewing nothing, when a scan parted this
-- process's members (its lease lapsed) or its lease is gone: the bridge then lists
-- its members of the room again (presence.lua).
if redis.call('ZREM', KEYS[3], ARGV[2]) == 1 or not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 1
end
hold_lease(KEYS[1], KEYS[2], ARGV[2], tonumber(ARGV[1]))
return 0
