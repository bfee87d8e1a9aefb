-- The epoch of an application's sequences in this Redis (KEYS[1]): when they began, in µs of
-- Redis's clock, with that clock now. A missing epoch means Redis lost its data (or never had
-- the application's keys): it begins now, or ARGV[1] µs before now for an application created
-- this moment, none of whose numbers can be in flight. Returns {epoch, now} as strings.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = string.format('%d', now - tonumber(ARGV[1]))
  redis.call('SET', KEYS[1], epoch)
end
return {epoch, string.format('%d', now)}
