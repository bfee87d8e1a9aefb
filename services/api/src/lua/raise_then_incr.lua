-- Raises the sequence at KEYS[1] to at least the seed ARGV[5] (never lowers it), then takes the
-- next number: {4, number, ahead} when this call moved the key, {0, number, ahead} when it was
-- already that high, or a rejection from check() (the raise stays: it is a `max` any writer may
-- make). KEYS[1..3] and ARGV[1..4] are laid out as one request of incr_existing.lua (the
-- sequence, the rate state, the deletion mark; the cap, the emission interval, the tolerance, the
-- mark's flag).
-- The fence: the seed was read while the application's epoch KEYS[4] was ARGV[6]. If Redis lost
-- its data since, the seed may predate numbers taken after it: {6, 0, -1}, nothing written.
if redis.call('GET', KEYS[4]) ~= ARGV[6] then return {6, 0, -1} end
local gone_key = nil
if ARGV[4] == '1' then gone_key = KEYS[3] end
local r = read(KEYS[1], KEYS[2], gone_key)
local seeded = 0
local current = tonumber(r[1] or '-1')
if current < tonumber(ARGV[5]) then
  redis.call('SET', KEYS[1], ARGV[5])
  current = tonumber(ARGV[5])
  seeded = 4
end
local rejected, ahead = check(r, KEYS[2], current, ARGV[1], ARGV[2], ARGV[3])
if rejected then return rejected end
write_rates()
return {seeded, redis.call('INCR', KEYS[1]), ahead}
