-- The rate rule alone (no sequence): admits one request of the limiter at KEYS[2] (KEYS[1] is
-- the same key; ARGV[1] must be 0, no cap): {0, 0, ahead} or the rejection {3, wait_us, -1}.
local rejected = check(0)
if rejected then return rejected end
return {0, 0, ahead}
