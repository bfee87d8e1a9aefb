"""The audit after the load: every acknowledged write checked against MySQL (lost, misplaced,
duplicated), counts against rows, a sample of messages against the search API, and the apis'
numbering counters."""

from __future__ import annotations

import asyncio
import collections
import random
import urllib.parse
from dataclasses import dataclass, field
from typing import Dict, List, Set, Tuple

from .clients import HttpClient, HttpError
from .harness import Deadline, HarnessError, log
from .ledger import WORD_RE, Chat, Ledger
from .load import Context, tokens_sql

@dataclass
class Findings:
    lost: List[str] = field(default_factory=list)
    misplaced: List[str] = field(default_factory=list)
    duplicated: List[str] = field(default_factory=list)
    duplicated_bodies: List[str] = field(default_factory=list)
    extra_rows: int = 0


Rows = Dict[Tuple[Chat, int], str]


async def fetch_rows(ctx: Context) -> Tuple[Set[Chat], Rows]:
    """The chats and messages MySQL holds for the scenario's applications."""
    index = {app.id: i for i, app in enumerate(ctx.apps)}
    ids = ", ".join(str(app.id) for app in ctx.apps)
    chats = {Chat(index[int(r[0])], int(r[1])) for r in await ctx.env.db.query(
        f"SELECT application_id, number FROM chats WHERE application_id IN ({ids})")}
    rows = {}
    for app_id, chat, number, body in await ctx.env.db.query(
            "SELECT c.application_id, c.number, m.number, m.body FROM messages m "
            f"JOIN chats c ON c.id = m.chat_id WHERE c.application_id IN ({ids})", timeout=120):
        rows[(Chat(index[int(app_id)], int(chat)), int(number))] = body
    return chats, rows


def analyse(ledger: Ledger, chats: Set[Chat], rows: Rows, idempotency: bool) -> Findings:
    """Compares MySQL with the ledger."""
    found = Findings()
    for chat, reqs in ledger.chat_acks.items():
        if len(reqs) > 1:
            found.duplicated.append(f"chat {chat} acknowledged to {len(reqs)} requests")
        if chat not in chats:
            found.lost.append(f"chat {chat}")
    for key, reqs in ledger.message_acks.items():
        chat, number = key
        if len({r.key for r in reqs}) > 1:
            # Two different requests were told they created the same message.
            bodies = " | ".join(r.body[:40] for r in reqs)
            found.duplicated.append(f"message {chat}/{number} acknowledged to {len(reqs)} "
                                    f"requests ({bodies})")
            continue
        if key not in rows:
            found.lost.append(f"message {chat}/{number} ({reqs[0].body[:40]})")
            continue
        state = ledger.messages[key]
        if rows[key] != state.latest_body and rows[key] not in state.unconfirmed:
            found.misplaced.append(f"message {chat}/{number}: stored {rows[key][:50]!r}, "
                                   f"expected {state.latest_body[:50]!r}")
    # The same body under more than one number: a request stored twice.
    by_body: Dict[str, List[Tuple[Chat, int]]] = collections.defaultdict(list)
    for key, body in rows.items():
        by_body[body].append(key)
    for body, keys in by_body.items():
        if len(keys) < 2:
            continue
        req = ledger.creation_by_body.get(body)
        extra = len(keys) - 1
        where = ", ".join(f"{c}/{n}" for c, n in sorted(keys))
        if req is not None and req.attempts > 1 and not idempotency:
            # A retry of a request the server may have handled already, with a server that
            # ignores Idempotency-Key: an expected extra row, not a defect of the numbering.
            found.duplicated_bodies.extend([f"{body[:40]!r} at {where}"] * extra)
        else:
            found.duplicated.extend([f"body {body[:40]!r} stored at {where}"] * extra)
    found.extra_rows = len(set(rows) - set(ledger.message_acks))
    return found


async def wait_for_persister(ctx: Context, timeout: float):
    """Polls MySQL until every acknowledged write is there with its expected body, or the
    persister's consumer has drained (nothing pending, nothing unacked: what is missing then
    will not come), or the deadline passes."""
    deadline = Deadline(timeout)
    consumer = ctx.env.setting("CONFAB_PERSISTER_CONSUMER", "confab-persister")
    drained_polls = 0
    while True:
        chats, rows = await fetch_rows(ctx)
        findings = analyse(ctx.ledger, chats, rows, bool(ctx.idempotency))
        if not findings.lost and not findings.misplaced:
            return chats, rows, True
        pending = await ctx.env.consumer_pending(consumer)
        drained_polls = drained_polls + 1 if pending == (0, 0) else 0
        if drained_polls >= 3 or deadline.expired():
            log(f"persister wait ended with {len(findings.lost)} missing and "
                f"{len(findings.misplaced)} differing rows (consumer pending={pending})")
            return chats, rows, False
        await asyncio.sleep(1.0)


async def wait_for_counts(ctx: Context, timeout: float) -> Tuple[bool, List[str]]:
    """Polls until every count equals the rows it counts (the counter reconciler's job)."""
    deadline = Deadline(timeout)
    mismatches: List[str] = []
    while True:
        mismatches = []
        for app_id, number, stored, actual in await ctx.env.db.query(
                "SELECT c.application_id, c.number, c.messages_count, "
                "(SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id) FROM chats c"):
            if stored != actual:
                mismatches.append(f"chat {number} of application id {app_id}: "
                                  f"messages_count={stored}, rows={actual}")
        for name, stored, actual in await ctx.env.db.query(
                "SELECT a.name, a.chats_count, "
                "(SELECT COUNT(*) FROM chats c WHERE c.application_id = a.id) "
                "FROM applications a WHERE a.deleted_at IS NULL"):
            if stored != actual:
                mismatches.append(f"application {name}: chats_count={stored}, rows={actual}")
        if not mismatches or deadline.expired():
            return not mismatches, mismatches
        await asyncio.sleep(0.5)


async def check_search(ctx: Context, rows: Rows, candidates: List[Tuple[Chat, int]],
                       timeout: float) -> Tuple[int, List[str], List[str]]:
    """Every sampled message must be found by its unique word in its chat (polling for index
    lag until the deadline). An error answer is never 'not found': it fails the check."""
    rng = random.Random(ctx.opts.seed)
    sample = rng.sample(candidates, min(len(candidates), ctx.opts.search_sample))
    consumer = ctx.env.setting("CONFAB_INDEXER_CONSUMER", "confab-indexer")
    deadline = Deadline(timeout)
    # Give the indexer the chance to drain first; the polling below covers what remains.
    while not deadline.expired() and deadline.remaining() > timeout / 2:
        if await ctx.env.consumer_pending(consumer) == (0, 0):
            break
        await asyncio.sleep(0.5)

    pending: Dict[Tuple[Chat, int], str] = {}
    for key in sample:
        match = WORD_RE.search(rows[key])
        if match:
            pending[key] = match.group(0)
    errors: List[str] = []
    semaphore = asyncio.Semaphore(8)

    async def lookup(key: Tuple[Chat, int], word: str, client_index: int) -> str:
        chat, number = key
        path = (f"/api/v1/applications/{ctx.apps[chat.app].token}/chats/{chat.number}"
                f"/messages/search"
                f"?query={urllib.parse.quote(word)}&per_page=500")
        async with semaphore:
            client = HttpClient(ctx.env.api_ports[client_index % 2], ctx.opts.request_timeout)
            try:
                for attempt in range(3):
                    try:
                        response = await client.request("GET", path)
                        break
                    except (OSError, HttpError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                        if attempt == 2:
                            return f"error: no response for {chat}/{number} {word}"
                        await asyncio.sleep(0.5)
            finally:
                client.close()
        if response.status != 200:
            return f"error: {response.status} {response.body[:200]!r} for {chat}/{number} {word}"
        hits = [h for h in (response.json() or []) if int(h.get("number", -1)) == number]
        if len(hits) > 1:
            return f"error: {chat}/{number} found {len(hits)} times"
        if hits and hits[0].get("body") == rows[key]:
            return "found"
        return "missing"

    while pending:
        keys = list(pending)
        results = await asyncio.gather(*(lookup(k, pending[k], i) for i, k in enumerate(keys)))
        for key, result in zip(keys, results):
            if result == "found":
                del pending[key]
            elif result.startswith("error"):
                errors.append(result)
                del pending[key]
        if not pending or deadline.expired():
            break
        await asyncio.sleep(1.0)
    missing = [f"{c}/{n} {w}" for (c, n), w in pending.items()]
    return len(sample), missing, errors


@dataclass
class AuditResult:
    findings: Findings
    caught_up: bool
    counts_ok: bool
    count_mismatches: List[str]
    search_ok: bool
    search_checked: int
    search_missing: List[str]
    search_errors: List[str]


async def audit(ctx: Context, timeouts: Dict[str, float]) -> AuditResult:
    env = ctx.env
    log("audit: waiting until every service is ready")
    await env.ensure_all_ready()
    ids = {token: int(app_id) for token, app_id in await env.db.query(
        f"SELECT token, id FROM applications WHERE token IN ({tokens_sql(ctx)})")}
    for app in ctx.apps:
        if app.token not in ids:
            raise HarnessError(f"the application {app.name} is missing from MySQL")
        app.id = ids[app.token]
    log("audit: waiting for the persister to catch up")
    chats, rows, caught_up = await wait_for_persister(ctx, timeouts["persist"])
    findings = analyse(ctx.ledger, chats, rows, bool(ctx.idempotency))
    log("audit: waiting for the counts to converge")
    counts_ok, mismatches = await wait_for_counts(ctx, timeouts["counts"])
    log("audit: searching")
    # Numbers acknowledged to two requests (duplicated) are left out of the search sample.
    flagged = {key for key, reqs in ctx.ledger.message_acks.items()
               if len({r.key for r in reqs}) > 1}
    candidates = sorted(key for key, state in ctx.ledger.messages.items()
                        if key in rows and key not in flagged
                        and (rows[key] == state.latest_body or rows[key] in state.unconfirmed))
    checked, missing, errors = await check_search(ctx, rows, candidates, timeouts["search"])
    return AuditResult(findings, caught_up, counts_ok, mismatches,
                       not missing and not errors and checked > 0, checked, missing, errors)


async def scrape_numbering_counters(ctx: Context) -> None:
    """Sums the apis' re-seeds (`confab_sequence_reseeds_total`, a parent's first number
    included) and publish collisions (`confab_events_published_total{outcome="collision"}`): the
    evidence that a run exercised sequence recovery. Counters start at zero with each api
    process, so after an api restart they cover only its latest life."""
    reseeds = collisions = 0
    for name in ("api-a", "api-b"):
        client = HttpClient(ctx.env.admin_ports[name], 5)
        try:
            text = (await client.request("GET", "/metrics")).body.decode("utf-8", "replace")
        except (OSError, HttpError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return
        finally:
            client.close()
        for line in text.splitlines():
            value = line.rsplit(" ", 1)[-1]
            if line.startswith("confab_sequence_reseeds_total"):
                reseeds += int(float(value))
            elif line.startswith("confab_events_published_total") and 'outcome="collision"' in line:
                collisions += int(float(value))
    ctx.reseeds, ctx.collisions = reseeds, collisions
