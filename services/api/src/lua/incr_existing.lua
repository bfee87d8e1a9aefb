-- Takes the next number of each request's sequence, in order, each only if its key exists (a
-- batch of one or more requests; Rust's `numbering::batch`). Request i (from 0) has the keys
-- KEYS[3i+1] (the sequence), KEYS[3i+2] (the rate state, or the sequence when the rate is not
-- limited) and KEYS[3i+3] (the parent's deletion mark, or the sequence when there is none), and
-- the arguments ARGV[4i+1..4i+4]: the cap, the emission interval and the tolerance in µs, and 1
-- when KEYS[3i+3] is a deletion mark. Answers three fields per request, in order: {1, 0, -1}
-- when its sequence is missing (the caller seeds it), a rejection from check(), or
-- {0, number, ahead}. Later requests see what earlier ones wrote (the TAT, the sequence).
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local seq_key, rate_key = KEYS[3 * i + 1], KEYS[3 * i + 2]
  local gone_key = nil
  if ARGV[4 * i + 4] == '1' then gone_key = KEYS[3 * i + 3] end
  local r = read(seq_key, rate_key, gone_key)
  local answer
  if not r[1] then
    answer = {1, 0, -1}
  else
    local rejected, ahead = check(r, rate_key, r[1], ARGV[4 * i + 1], ARGV[4 * i + 2], ARGV[4 * i + 3])
    answer = rejected or {0, redis.call('INCR', seq_key), ahead}
  end
  out[3 * i + 1], out[3 * i + 2], out[3 * i + 3] = answer[1], answer[2], answer[3]
end
write_rates()
return out
