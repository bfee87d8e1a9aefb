-- Raises each sequence KEYS[i] to at least ARGV[i], creating it if missing; never lowers one.
-- Every writer of a sequence (the api's INCR, its re-seeding, the persister after a commit) only
-- moves it up, so none can undo another's step. Returns how many keys moved. One MGET and at
-- most one MSET whatever the number of keys: a script pays for each redis.call far more than
-- the command itself costs.
local current = redis.call('MGET', unpack(KEYS))
local raise = {}
for i, key in ipairs(KEYS) do
  if tonumber(current[i] or '-1') < tonumber(ARGV[i]) then
    raise[#raise + 1] = key
    raise[#raise + 1] = ARGV[i]
  end
end
if #raise > 0 then redis.call('MSET', unpack(raise)) end
return #raise / 2
