"""What the API's contract asks of a client that a schema cannot say.

An `Idempotency-Key` names one request: a client never sends one key with two different bodies
(the api answers that with `422 idempotency_key_reused`, as the IETF draft says it should).
Schemathesis draws header values independently of bodies, so it would reuse a key across bodies;
this hook gives every request whose drawn key is valid a fresh, equally valid one, as a client
would. Invalid keys (negative tests) pass unchanged, so their `400` is still checked.
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"^[ -~]{1,255}$")


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and VALID_KEY.match(str(headers[name])):
            headers[name] = str(uuid.uuid4())
