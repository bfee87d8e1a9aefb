-- wrk script: POST a 100-byte message to one of chats 1..100 of the application $TOKEN.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- ACCEPT_ENCODING (e.g. gzip): sent as Accept-Encoding, as a browser would.
local encoding = os.getenv("ACCEPT_ENCODING")
if encoding and encoding ~= "" then wrk.headers["Accept-Encoding"] = encoding end
wrk.body = '{"body":"' .. string.rep("x", 100) .. '"}'
local token = os.getenv("TOKEN")
request = function()
  return wrk.format(nil, "/api/v1/applications/" .. token .. "/chats/" .. math.random(1, 100) .. "/messages")
end
