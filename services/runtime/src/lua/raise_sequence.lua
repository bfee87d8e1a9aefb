-- Raises each existing sequence KEYS[i] to at least ARGV[i]; never lowers one and never creates
-- a missing one (a missing sequence is seeded by the api alone, fenced and after the quiescence
-- of confab_core::sequence: a key made here from one batch's numbers could sit below numbers
-- persisted before Redis lost its data). Every writer of a sequence only moves it up, so none can
-- undo another's step. Returns how many keys moved. One MGET and at most one MSET whatever the
-- number of keys: a script pays for each redis.call far more than the command itself costs.
-- ARGV[#KEYS + 1] is 1 when the caller will `WAIT` for replicas: then every existing key is
-- written, moved or not, so that the wait covers the increments that came before the raise
-- (`WAIT` waits for the caller's own last write to replicate).
local current = redis.call('MGET', unpack(KEYS))
local touch = ARGV[#KEYS + 1] == '1'
local write = {}
local moved = 0
for i, key in ipairs(KEYS) do
  if current[i] then
    local raised = tonumber(current[i]) < tonumber(ARGV[i])
    if raised then moved = moved + 1 end
    if raised or touch then
      write[#write + 1] = key
      write[#write + 1] = raised and ARGV[i] or current[i]
    end
  end
end
if #write > 0 then redis.call('MSET', unpack(write)) end
return moved
