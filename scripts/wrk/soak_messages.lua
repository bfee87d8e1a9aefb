-- wrk script of scripts/bench/soak.py (run with -t1: the count is the one thread's): 100-byte
-- messages over chats 1..$SOAK_CHATS of the application $TOKEN until $SOAK_MESSAGES were answered
-- 201. Prints "written N" on stdout each time N, a multiple of $SOAK_EVERY or the last, is
-- reached, then "done N". From then on the connections ask for /soak-idle (a 404 that writes
-- nothing) until soak.py stops wrk, so the POSTs still in flight at "done" (at most one per
-- connection) are the only messages written past $SOAK_MESSAGES. A POST answered otherwise, or
-- lost with its connection, is simply not counted: the next request is a POST again.
local token = os.getenv("TOKEN")
local total = tonumber(os.getenv("SOAK_MESSAGES"))
local every = tonumber(os.getenv("SOAK_EVERY"))
local chats = tonumber(os.getenv("SOAK_CHATS"))
local body = '{"body":"' .. string.rep("x", 100) .. '"}'
local posts, idle = {}, nil
local created = 0

function init(args)
  for chat = 1, chats do
    posts[chat] = wrk.format("POST",
      "/api/v1/applications/" .. token .. "/chats/" .. chat .. "/messages",
      { ["Content-Type"] = "application/json" }, body)
  end
  idle = wrk.format("GET", "/soak-idle", {})
end

function request()
  if created < total then
    return posts[math.random(1, chats)]
  end
  return idle
end

function response(status, headers, body)
  if status == 201 then
    created = created + 1
    if created <= total and (created % every == 0 or created == total) then
      io.write("written ", created, "\n")
      if created == total then
        io.write("done ", created, "\n")
      end
      io.flush()
    end
  end
end
