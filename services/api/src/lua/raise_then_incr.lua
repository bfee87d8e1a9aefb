-- Raises the sequence at KEYS[1] to at least the seed ARGV[4] (never lowers it), then takes the
-- next number: {4, number, ahead} when this call moved the key, {0, number, ahead} when it was
-- already that high, or a rejection from check() (the raise stays: it is a `max` any writer may
-- make). KEYS[2] is the rate state (or the sequence), KEYS[4] the parent's deletion mark if it
-- has one; ARGV[1..3] the cap, the emission interval and the tolerance.
-- The fence: the seed was read while the application's epoch KEYS[3] was ARGV[5]. If Redis lost
-- its data since, the seed may predate numbers taken after it: {6, 0, -1}, nothing written.
if redis.call('GET', KEYS[3]) ~= ARGV[5] then return {6, 0, -1} end
local r = read(KEYS[1], KEYS[2], KEYS[4])
local seeded = 0
local current = tonumber(r[1] or '-1')
if current < tonumber(ARGV[4]) then
  redis.call('SET', KEYS[1], ARGV[4])
  current = tonumber(ARGV[4])
  seeded = 4
end
local rejected, ahead = check(r, KEYS[2], current, ARGV[1], ARGV[2], ARGV[3])
if rejected then return rejected end
write_rates()
return {seeded, redis.call('INCR', KEYS[1]), ahead}
