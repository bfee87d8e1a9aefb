-- Takes the next number of the sequence at KEYS[1] only if the key exists: {1, 0} when it is
-- missing (the caller seeds it), a rejection from check(), or {0, number, ahead}.
if not sequence then return {1, 0, -1} end
local rejected = check(sequence)
if rejected then return rejected end
return {0, redis.call('INCR', KEYS[1]), ahead}
