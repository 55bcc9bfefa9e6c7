-- 16 GET / requests in one write; wrk counts each response.
-- (bench/wrk-pipe.sh and bench/callgrind-wrk.sh: wrk -s bench/wrk-pipe.lua)
init = function(args)
  local r = {}
  for i = 1, 16 do r[i] = wrk.format("GET", "/") end
  req = table.concat(r)
end
request = function() return req end
