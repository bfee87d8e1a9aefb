-- wrk script for the bare reference path (../shared/bench/bare-path): number items under one
-- parent with an empty body, which is all a chat creation is (INCR one application's key,
-- publish, wait for the ack, answer; the writer inserts a row).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"body":""}'
request = function()
  return wrk.format(nil, "/chats/1/messages")
end
