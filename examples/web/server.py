#!/usr/bin/env python3
"""The web example's server: serves the chat page and mints client tokens for it.

It stands for an application's own backend. It holds the application token (a secret that must
never reach a browser) and gives each page a short-lived client token instead, limited to one
chat and to reading, posting and following it. The page then talks to Confab directly with that
client token; Confab lets it because the page's origin is among the application's allowed
origins (CORS).

Standard library only. Settings (environment):

  CONFAB_APP_TOKEN        the application token (required)
  CONFAB_API_URL          where this server reaches Confab (default http://127.0.0.1:8080)
  CONFAB_PUBLIC_API_URL   where browsers reach Confab (default: CONFAB_API_URL)
  CONFAB_CHAT             the chat number the page follows (default 1)
  CONFAB_TOKEN_TTL_SECONDS  lifetime of each client token (default 3600, at most 86400)
  PORT                    the port to listen on, on 127.0.0.1 (default 8000)

Routes: GET / (the page), /app.js, /style.css, and GET /token, which answers
{"token", "api", "chat", "expires_at", "expires_in"}.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))

# Only these files are served: not this script, nor anything else in the directory.
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def setting(name, default=None):
    value = os.environ.get(name, "").strip()
    return value or default


def config():
    app_token = setting("CONFAB_APP_TOKEN")
    if not app_token:
        sys.exit("CONFAB_APP_TOKEN is not set: the application token this server mints client tokens with")
    api = setting("CONFAB_API_URL", "http://127.0.0.1:8080").rstrip("/")
    try:
        chat = int(setting("CONFAB_CHAT", "1"))
        ttl = int(setting("CONFAB_TOKEN_TTL_SECONDS", "3600"))
        port = int(setting("PORT", "8000"))
    except ValueError as e:
        sys.exit(f"a numeric setting is not a number: {e}")
    if not 1 <= ttl <= 86400:
        sys.exit("CONFAB_TOKEN_TTL_SECONDS must be between 1 and 86400")
    return {
        "app_token": app_token,
        "api": api,
        "public_api": setting("CONFAB_PUBLIC_API_URL", api).rstrip("/"),
        "chat": chat,
        "ttl": ttl,
        "port": port,
    }


CONFIG = None


class MintError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def mint():
    """A client token for the configured chat: read it, post to it, follow it live."""
    # A real application authenticates its user first (a session cookie, say) and mints a token
    # for that user's chats only; this example lets anyone who can load the page have one.
    request = urllib.request.Request(
        f"{CONFIG['api']}/api/v1/applications/{CONFIG['app_token']}/client_tokens",
        data=json.dumps(
            {
                "chats": [CONFIG["chat"]],
                "rights": ["read", "post", "subscribe"],
                "ttl_seconds": CONFIG["ttl"],
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            minted = json.load(response)
    except urllib.error.HTTPError as e:
        # Confab's error, passed on; the URL (which holds the application token) is not.
        try:
            error = json.load(e).get("error", {})
        except (ValueError, AttributeError):
            error = {}
        raise MintError(
            502,
            "mint_failed",
            f"Confab refused to mint a client token: {e.code} {error.get('code', '')}: "
            f"{error.get('message', '')}".strip(),
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise MintError(502, "confab_unreachable", f"cannot reach Confab: {reason}") from None
    expires_at = minted["expires_at"]
    try:
        expires = datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp()
        expires_in = max(0, int(expires - time.time()))
    except ValueError:
        expires_in = CONFIG["ttl"]
    return {
        "token": minted["token"],
        "api": CONFIG["public_api"],
        "chat": CONFIG["chat"],
        "expires_at": expires_at,
        # The page plans its renewal on this rather than on its own clock against expires_at.
        "expires_in": expires_in,
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "confab-web-example"

    def send(self, status, body, content_type, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, value):
        body = json.dumps(value).encode()
        # No Access-Control-Allow-Origin: only this server's own pages may read a token.
        self.send(status, body, "application/json", [("Cache-Control", "no-store")])

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/token":
            try:
                self.send_json(200, mint())
            except MintError as e:
                self.log_message("minting a client token failed: %s", e.message)
                self.send_json(e.status, {"error": {"code": e.code, "message": e.message}})
            return
        if path in STATIC:
            name, content_type = STATIC[path]
            with open(os.path.join(HERE, name), "rb") as f:
                self.send(200, f.read(), content_type, [("Cache-Control", "no-cache")])
            return
        self.send_json(404, {"error": {"code": "not_found", "message": "no such page"}})

    do_HEAD = do_GET


def main():
    global CONFIG
    CONFIG = config()
    server = ThreadingHTTPServer(("127.0.0.1", CONFIG["port"]), Handler)
    server.daemon_threads = True
    print(
        f"serving the web example on http://127.0.0.1:{server.server_port}/ "
        f"(chat {CONFIG['chat']} of {CONFIG['public_api']})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
