#!/bin/sh
# `helm test` round trip through an installed Confab (also run by the packaging tests against the
# services started in-process): create an application, a chat and a message, read the message
# back once the persister wrote it, find it by search once the indexer indexed it.
#
# Needs a POSIX shell and curl. Environment:
#   CONFAB_API_URL                 the api's base URL (required)
#   CONFAB_ADMIN_TOKEN             optional: register the application through the admin API under a
#                                  key of its own and delete it at the end (else POST /applications,
#                                  which leaves it behind)
#   CONFAB_TEST_TIMEOUT_SECONDS    how long to wait for the message to be readable and searchable
#                                  (default 120)
set -eu

base="${CONFAB_API_URL:?CONFAB_API_URL is required}"
base="${base%/}"
timeout="${CONFAB_TEST_TIMEOUT_SECONDS:-120}"
deadline=$(( $(date +%s) + timeout ))
stamp="$(date +%s)$$"
word="helmtest${stamp}"
key="helm-test-${stamp}"
body_file="$(mktemp)"
trap 'rm -f "$body_file"' EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# call METHOD PATH [JSON]: the status code on stdout, the body in $body_file.
call() {
    auth=""
    case "$2" in
        /admin/*) auth="Authorization: Bearer ${CONFAB_ADMIN_TOKEN}" ;;
    esac
    if [ -n "${3:-}" ]; then
        curl -sS -m 10 -o "$body_file" -w '%{http_code}' -X "$1" -H "$auth" \
            -H 'Content-Type: application/json' --data "$3" "$base$2" || echo 000
    else
        curl -sS -m 10 -o "$body_file" -w '%{http_code}' -X "$1" -H "$auth" "$base$2" || echo 000
    fi
}

# field NAME: the string or number value of NAME in the last body (a single object).
field() {
    sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" "$body_file" | head -n 1
}

# until_ok WHAT METHOD PATH PATTERN: repeat the call until it answers 200 with PATTERN in the body.
until_ok() {
    while :; do
        status="$(call "$2" "$3")"
        if [ "$status" = 200 ] && grep -q "$4" "$body_file"; then
            return 0
        fi
        [ "$(date +%s)" -lt "$deadline" ] || fail "$1: last answer $status $(cat "$body_file")"
        sleep 1
    done
}

if [ -n "${CONFAB_ADMIN_TOKEN:-}" ]; then
    status="$(call PUT "/admin/v1/applications/$key" '{"name":"helm test"}')"
    [ "$status" = 201 ] || fail "registering through the admin API: $status $(cat "$body_file")"
    trap 'call DELETE "/admin/v1/applications/$key" >/dev/null; rm -f "$body_file"' EXIT
else
    status="$(call POST /api/v1/applications '{"name":"helm test"}')"
    [ "$status" = 201 ] || fail "creating an application: $status $(cat "$body_file")"
fi
token="$(field token)"
[ -n "$token" ] || fail "no token in $(cat "$body_file")"
app="/api/v1/applications/$token"
echo "application created"

status="$(call POST "$app/chats" '{}')"
[ "$status" = 201 ] || fail "creating a chat: $status $(cat "$body_file")"
chat="$(field number)"
echo "chat $chat created"

status="$(call POST "$app/chats/$chat/messages" "{\"body\":\"hello $word\"}")"
[ "$status" = 201 ] || fail "creating a message: $status $(cat "$body_file")"
message="$(field number)"
echo "message $message created"

until_ok "reading the message back" GET "$app/chats/$chat/messages/$message" "$word"
echo "message read back"
until_ok "finding the message by search" GET "$app/chats/$chat/messages/search?query=$word" "$word"
echo "message found by search"
echo "PASS: round trip through $base"
