-- Raises the sequence at KEYS[1] to at least ARGV[1], creating it if missing; never lowers it.
-- Every writer of a sequence (the api's INCR, its re-seeding, the persister after a commit) only
-- moves it up, so none can undo another's step.
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
local target = tonumber(ARGV[1])
if current < target then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
