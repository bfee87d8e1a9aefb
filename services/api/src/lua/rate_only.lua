-- The rate rule alone (no sequence): admits one request of the limiter at KEYS[1] (ARGV[1] is the
-- emission interval, ARGV[2] the tolerance): {0, 0, ahead} or the rejection {3, wait_us, -1}.
local r = read(KEYS[1], KEYS[1], nil)
local rejected, ahead = check(r, KEYS[1], 0, 0, ARGV[1], ARGV[2])
if rejected then return rejected end
write_rates()
return {0, 0, ahead}
