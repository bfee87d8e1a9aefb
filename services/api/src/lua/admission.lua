-- The admission rules shared by the numbering scripts (concatenated in front of each, so it is
-- one script to Redis): read() fetches what a request's admission depends on, check() decides it.
-- check() returns a rejection {5, 0, -1} (the parent is deleted: no number is ever taken in a
-- deleted chat), {2, 0, -1} (cap reached) or {3, wait_us, -1} (rate exceeded), or nil and
-- `ahead` after recording the admission; a rejection writes nothing. Every answer of the scripts
-- has three fields: status, value, and `ahead`: after an admission, how far (µs) the limiter's
-- state now runs ahead of the clock (-1: no rate limit), from which the api tells the client its
-- remaining burst (the `RateLimit` header) without another round trip.
--
-- The rate limiter is a GCRA: the rate key holds the theoretical arrival time (TAT) of the next
-- request, in µs. A request is admitted while it is at most `tolerance` ahead of the clock, and
-- moves the TAT one emission interval on. The clock is Redis `TIME`, the same for every api
-- replica, so a replica's own clock never enters the decision. It is read once per script call:
-- the requests of one batch are decided as if they arrived at the same instant, one after the
-- other.
--
-- A request's three keys are read with one MGET: each redis.call costs a script far more than the
-- command itself, so a request makes two (MGET, INCR), and a batch one TIME and one SET per rate
-- key: check() keeps the TATs it moved in `tats`, and the script writes them with write_rates()
-- before it answers (every script must).
local clock
local function now_us()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return clock
end

-- {sequence (false when missing), rate state, deletion mark (false when none)}; gone_key may be nil.
local function read(seq_key, rate_key, gone_key)
  local r = redis.call('MGET', seq_key, rate_key, gone_key or seq_key)
  if not gone_key then r[3] = false end
  return r
end

-- The TATs moved in this call, by rate key; a later request of the batch starts from them.
local tats = {}

local function write_rates()
  for rate_key, tat in pairs(tats) do
    redis.call('SET', rate_key, string.format('%d', tat),
      'PX', math.floor((tat - now_us()) / 1000) + 1000)
  end
end

-- `value` is what the cap is checked against (after a raise, the raised sequence); `cap` 0 means
-- none, `emission` 0 no rate limit (then the rate key is not written).
local function check(r, rate_key, value, cap, emission, tolerance)
  if r[3] then return {5, 0, -1} end
  cap = tonumber(cap)
  if cap > 0 and tonumber(value) >= cap then
    return {2, 0, -1}
  end
  emission = tonumber(emission)
  if emission == 0 then return nil, -1 end
  local now = now_us()
  local tat = tats[rate_key] or tonumber(r[2] or now)
  if tat < now then tat = now end
  local wait = tat - now - tonumber(tolerance)
  if wait > 0 then return {3, wait, -1} end
  local next_tat = tat + emission
  tats[rate_key] = next_tat
  return nil, next_tat - now
end
