-- wrk script: POST a 100-byte message to one of chats 1..100 of the application $TOKEN.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"body":"' .. string.rep("x", 100) .. '"}'
local token = os.getenv("TOKEN")
request = function()
  return wrk.format(nil, "/api/v1/applications/" .. token .. "/chats/" .. math.random(1, 100) .. "/messages")
end
