-- Raises each existing sequence KEYS[i] to at least ARGV[i]; never lowers one and never creates
-- a missing one (a missing sequence is seeded by the api alone, fenced and after the quiescence
-- of confab_core::sequence: a key made here from one batch's numbers could sit below numbers
-- persisted before Redis lost its data). Every writer of a sequence only moves it up, so none can
-- undo another's step. Returns how many keys moved. One MGET and at most one MSET whatever the
-- number of keys: a script pays for each redis.call far more than the command itself costs.
local current = redis.call('MGET', unpack(KEYS))
local raise = {}
for i, key in ipairs(KEYS) do
  if current[i] and tonumber(current[i]) < tonumber(ARGV[i]) then
    raise[#raise + 1] = key
    raise[#raise + 1] = ARGV[i]
  end
end
if #raise > 0 then redis.call('MSET', unpack(raise)) end
return #raise / 2
