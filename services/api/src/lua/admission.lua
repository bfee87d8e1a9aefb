-- The admission rules shared by both numbering scripts (concatenated in front of each, so it is
-- one script to Redis). check() returns a rejection {2, 0, -1} (cap reached) or {3, wait_us, -1}
-- (rate exceeded), or nil after recording the admission; a rejection writes nothing. Every answer
-- of the scripts has three fields: status, value, and `ahead`: after an admission, how far (µs)
-- the limiter's state now runs ahead of the clock (-1: no rate limit), from which the api tells
-- the client its remaining burst (the `RateLimit` header) without another round trip.
-- KEYS[1] is the sequence, KEYS[2] the rate state, KEYS[GONE_KEY] (optional) the parent's
-- deletion mark (GONE_KEY is set by the line the api puts in front: 3, or 4 in the raising
-- script, whose KEYS[3] is the epoch); ARGV[1] the cap (0: none), ARGV[2] the emission interval in µs (0: no rate limit),
-- ARGV[3] the tolerance in µs. A parent marked deleted is the rejection {5, 0, -1}, before any
-- other rule: no number is ever taken in a deleted chat.
--
-- The rate limiter is a GCRA: KEYS[2] holds the theoretical arrival time (TAT) of the next
-- request, in µs. A request is admitted while it is at most `tolerance` ahead of the clock, and
-- moves the TAT one emission interval on. The clock is Redis `TIME`, the same for every api
-- replica, so a replica's own clock never enters the decision.
--
-- The three keys are read with one MGET: each redis.call costs a script far more than the
-- command itself, so the hot path makes four (MGET, TIME, SET, INCR), or two without a rate.
local gone = KEYS[GONE_KEY]
local read = redis.call('MGET', KEYS[1], KEYS[2], gone or KEYS[1])
-- The sequence's value (false when the key is missing).
local sequence = read[1]
local ahead = -1
-- `value`: the sequence's value the cap is checked against (after a raise, the raised one).
local function check(value)
  if gone and read[3] then return {5, 0, -1} end
  local cap = tonumber(ARGV[1])
  if cap > 0 and tonumber(value) >= cap then
    return {2, 0, -1}
  end
  local emission = tonumber(ARGV[2])
  if emission == 0 then return nil end
  local tolerance = tonumber(ARGV[3])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local tat = tonumber(read[2] or now)
  if tat < now then tat = now end
  local wait = tat - now - tolerance
  if wait > 0 then return {3, wait, -1} end
  local next_tat = tat + emission
  redis.call('SET', KEYS[2], string.format('%d', next_tat),
    'PX', math.floor((next_tat - now) / 1000) + 1000)
  ahead = next_tat - now
  return nil
end
