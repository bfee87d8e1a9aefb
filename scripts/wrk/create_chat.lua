-- wrk script: create a chat in the application $TOKEN.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = "{}"
local path = "/api/v1/applications/" .. os.getenv("TOKEN") .. "/chats"
request = function()
  return wrk.format(nil, path)
end
