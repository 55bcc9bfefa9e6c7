-- The members of a room: the union of the sets of the processes whose lease there
-- has not lapsed. KEYS: the room's leases. ARGV: the prefix of the room's sets.
local live = live_processes(KEYS[1])
if #live == 0 then return {} end
local sets = {}
for k, i in ipairs(live) do sets[k] = ARGV[1] .. i end
return redis.call('SUNION', unpack(sets))
