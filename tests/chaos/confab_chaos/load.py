"""The load: keep-alive connections to both api replicas, requests retried with the same
Idempotency-Key, the writers, and the set-up traffic before the faults begin (the applications,
their chats, the idempotency probe and the warm-up)."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Dict, List, Optional, Tuple

from .clients import HttpClient, HttpError, MySQLError, Response
from .environment import Environment
from .harness import Deadline, HarnessError, Options, log
from .ledger import Chat, Ledger, Request, message_body


@dataclass
class App:
    """One application the writers write into."""
    name: str
    token: str
    id: Optional[int] = None       # its row's id, known once the persister has stored it


@dataclass
class Context:
    """What the load and the audit share for one scenario."""
    env: Environment
    opts: Options
    ledger: Ledger
    load_seconds: float = 0.0
    reseeds: Optional[int] = None
    collisions: Optional[int] = None
    apps: List[App] = field(default_factory=list)
    chats: List[Chat] = field(default_factory=list)    # of every application
    idempotency: Optional[bool] = None
    # A scenario's own summary fields (after the common ones) and the checks of its own that
    # failed; any such failure makes the scenario's ok false.
    extra_fields: Dict[str, object] = field(default_factory=dict)
    failures: List[str] = field(default_factory=list)


class ApiPool:
    """The api replicas as seen by one task: a keep-alive connection to each."""

    def __init__(self, ports: List[int], timeout: float):
        self.clients = [HttpClient(port, timeout) for port in ports]

    def close(self) -> None:
        for client in self.clients:
            client.close()


def retryable(outcome: str, response: Optional[Response]) -> bool:
    """Network errors, timeouts and 5xx are retried with the same Idempotency-Key; so are 429
    (should the limiter refuse after all) and 409s other than the chat quota (an idempotent
    request that is still in progress elsewhere)."""
    if outcome in ("timeout", "conn_error"):
        return True
    status = int(outcome)
    if status >= 500 or status == 429:
        return True
    if status == 409 and response is not None:
        try:
            return (response.json() or {}).get("error", {}).get("code") != "chat_limit_reached"
        except (ValueError, AttributeError):
            return True
    return False


async def send(ctx: Context, pool: ApiPool, req: Request, method: str, path: str, payload: dict,
               expect: int, first_api: int, with_key: bool = True) -> Optional[Response]:
    """Sends one logical request, retrying the same request (same Idempotency-Key, same body) on
    network errors, timeouts and 5xx with exponential backoff, each attempt on the next api
    replica. Returns the final response, or None when every attempt failed."""
    body = json.dumps(payload).encode()
    headers = {"Idempotency-Key": req.key} if with_key else {}
    response: Optional[Response] = None
    for attempt in range(ctx.opts.retries + 1):
        client = pool.clients[(first_api + attempt) % len(pool.clients)]
        started = time.monotonic()
        req.sent_at = started
        response = None
        try:
            response = await client.request(method, path, body, headers)
            outcome = str(response.status)
        except asyncio.TimeoutError:
            outcome = "timeout"
        except (OSError, HttpError, asyncio.IncompleteReadError, ValueError):
            outcome = "conn_error"
        req.attempts += 1
        ctx.ledger.attempt(outcome, time.monotonic() - started)
        req.final_status = outcome
        if response is not None and response.status == expect:
            return response
        if not retryable(outcome, response):
            return response
        if attempt < ctx.opts.retries:
            delay = min(2.0, 0.2 * (2 ** attempt)) * random.uniform(0.75, 1.25)
            if response is not None and response.headers.get("retry-after", "").isdigit():
                delay = max(delay, min(2.0, float(response.headers["retry-after"])))
            await asyncio.sleep(delay)
    return None


def messages_path(ctx: Context, chat: Chat) -> str:
    return f"/api/v1/applications/{ctx.apps[chat.app].token}/chats/{chat.number}/messages"


async def create_message(ctx: Context, pool: ApiPool, chat: Chat, tag: str, seq: int,
                         first_api: int) -> Optional[Request]:
    req = Request("message", str(uuid.uuid4()), chat=chat, body=message_body(tag, seq))
    ctx.ledger.requests.append(req)
    ctx.ledger.creation_by_body[req.body] = req
    response = await send(ctx, pool, req, "POST", messages_path(ctx, chat), {"body": req.body},
                          201, first_api)
    if response is None:
        ctx.ledger.fail(req)
        return None
    if response.status != 201:
        ctx.ledger.reject(req)
        return None
    ctx.ledger.ack_message(req, int(response.json()["number"]))
    return req


async def patch_message(ctx: Context, pool: ApiPool, chat: Chat, number: int, tag: str, seq: int,
                        edit: int, first_api: int) -> None:
    # PATCH sets a body, so repeating it is harmless; it carries no Idempotency-Key.
    req = Request("patch", str(uuid.uuid4()), chat=chat, number=number,
                  body=message_body(tag, seq, edit))
    ctx.ledger.requests.append(req)
    response = await send(ctx, pool, req, "PATCH", f"{messages_path(ctx, chat)}/{number}",
                          {"body": req.body}, 200, first_api, with_key=False)
    if response is None:
        ctx.ledger.fail(req)
    elif response.status == 200:
        ctx.ledger.ack_patch(req)
    else:
        ctx.ledger.reject(req)


async def writer(ctx: Context, wid: int, stop: asyncio.Event, patch_ratio: float = 0.1) -> None:
    """Posts messages with unique bodies to random chats and sometimes edits one of its own
    acknowledged messages, until `stop`; finishes the request in hand (with its retries)."""
    rng = random.Random(ctx.opts.seed * 7919 + wid)
    pool = ApiPool(ctx.env.api_ports, ctx.opts.request_timeout)
    mine: List[Tuple[Chat, int, int]] = []  # (chat, number, seq) of acknowledged messages
    edits: Dict[int, int] = collections.defaultdict(int)
    seq = 0
    try:
        while not stop.is_set():
            first_api = (wid + seq) % 2
            if mine and rng.random() < patch_ratio:
                chat, number, of_seq = rng.choice(mine)
                edits[of_seq] += 1
                await patch_message(ctx, pool, chat, number, str(wid), of_seq, edits[of_seq],
                                    first_api)
            else:
                seq += 1
                chat = rng.choice(ctx.chats)
                req = await create_message(ctx, pool, chat, str(wid), seq, first_api)
                if req is not None:
                    mine.append((chat, req.number, seq))
    finally:
        pool.close()


async def progress(ctx: Context, every: float = 5.0) -> None:
    while True:
        await asyncio.sleep(every)
        s = ctx.ledger.attempt_statuses
        log(f"load: acknowledged={ctx.ledger.acknowledged} 503s={s['503']} "
            f"timeouts={s['timeout']} conn_errors={s['conn_error']} "
            f"unavailable={ctx.ledger.unavailable}")


async def setup_application(ctx: Context, chats: int, scenario: str, apps: int = 1) -> None:
    """Creates the application (or `apps` of them) and `chats` chats in each, through both
    replicas, before any fault."""
    pool = ApiPool(ctx.env.api_ports, ctx.opts.request_timeout)
    try:
        for index in range(apps):
            name = f"chaos-{scenario}" if apps == 1 else f"chaos-{scenario}-{index + 1}"
            req = Request("application", str(uuid.uuid4()))
            response = await send(ctx, pool, req, "POST", "/api/v1/applications",
                                  {"name": name}, 201, index % 2)
            if response is None or response.status != 201:
                raise HarnessError(f"creating the application failed: "
                                   f"{response.status if response else req.final_status} "
                                   f"{response.body[:300] if response else ''}")
            token = response.json()["token"]
            if not re.fullmatch(r"[0-9a-f]{48}", token):
                raise HarnessError(f"unexpected token format {token!r}")
            ctx.apps.append(App(name, token))
            for i in range(chats):
                req = Request("chat", str(uuid.uuid4()))
                ctx.ledger.requests.append(req)
                response = await send(ctx, pool, req, "POST",
                                      f"/api/v1/applications/{token}/chats", {}, 201, i % 2)
                if response is None or response.status != 201:
                    raise HarnessError(f"creating a chat failed: {req.final_status}")
                chat = Chat(index, int(response.json()["number"]))
                ctx.ledger.ack_chat(req, chat)
                ctx.chats.append(chat)
    finally:
        pool.close()


async def warm_up(ctx: Context) -> None:
    """One message into every chat through every replica, so each replica knows the chats (its
    in-process cache) before Redis, which remembers chats not yet persisted, is ever lost."""
    pool = ApiPool(ctx.env.api_ports, ctx.opts.request_timeout)
    try:
        for api in range(len(ctx.env.api_ports)):
            for i, chat in enumerate(ctx.chats):
                if await create_message(ctx, pool, chat, f"a{api}", i + 1, api) is None:
                    raise HarnessError(f"warm-up message to chat {chat} via api {api} failed")
    finally:
        pool.close()


async def probe_idempotency(ctx: Context) -> bool:
    """Sends one message twice with the same Idempotency-Key and body, through each replica:
    the server supports the key when the second answer carries the same number. The request is
    recorded as one logical request with two attempts, so without support its second row is
    reported as a duplicated body, not as a failure."""
    pool = ApiPool(ctx.env.api_ports, ctx.opts.request_timeout)
    try:
        chat = ctx.chats[0]
        req = await create_message(ctx, pool, chat, "p", 1, 0)
        if req is None:
            raise HarnessError("idempotency probe: the first request failed")
        again = await send(ctx, pool, req, "POST", messages_path(ctx, chat), {"body": req.body},
                           201, 1)
        try:
            return again is not None and again.status == 201 and \
                int(again.json()["number"]) == req.number
        except (ValueError, KeyError, TypeError):
            return False
    finally:
        pool.close()


def tokens_sql(ctx: Context) -> str:
    """The applications' tokens as an SQL list (tokens are hex: nothing to escape)."""
    return ", ".join(f"'{app.token}'" for app in ctx.apps)


async def wait_chats_persisted(ctx: Context, timeout: float = 60) -> None:
    """Waits until MySQL has every application and chat (and learns the applications' ids)."""
    index = {app.token: i for i, app in enumerate(ctx.apps)}
    deadline = Deadline(timeout)
    while not deadline.expired():
        try:
            rows = await ctx.env.db.query(
                "SELECT a.token, a.id, c.number FROM chats c "
                "JOIN applications a ON a.id = c.application_id "
                f"WHERE a.token IN ({tokens_sql(ctx)})")
            if {Chat(index[r[0]], int(r[2])) for r in rows} >= set(ctx.chats):
                for token, app_id, _ in rows:
                    ctx.apps[index[token]].id = int(app_id)
                return
        except MySQLError:
            pass
        await asyncio.sleep(0.3)
    raise HarnessError("the chats were not persisted in time", (ctx.env.procs["persister"],))


async def run_load(ctx: Context, duration: float,
                   chaos: Callable[[float], Awaitable[None]]) -> None:
    """Runs the writers for `duration` seconds while `chaos(end)` injects faults, then stops the
    writers and waits for their last requests."""
    stop = asyncio.Event()
    started = time.monotonic()
    end = started + duration
    writers = [asyncio.ensure_future(writer(ctx, wid, stop)) for wid in range(ctx.opts.writers)]
    reporter = asyncio.ensure_future(progress(ctx))
    try:
        await chaos(end)
        remaining = end - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
    except BaseException:
        # Interrupted or failed: do not wait for the writers' retries, stop them now.
        for task in writers:
            task.cancel()
        raise
    finally:
        stop.set()
        log("load: stopping writers")
        results = await asyncio.gather(*writers, return_exceptions=True)
        ctx.load_seconds = time.monotonic() - started
        reporter.cancel()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise HarnessError(f"a writer crashed: {result!r}")
