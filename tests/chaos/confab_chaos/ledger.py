"""The ledger: every answer the writers got, the ground truth the audit checks MySQL and search
against, and the unique bodies that make each message findable."""

from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Set, Tuple


class Chat(NamedTuple):
    """A chat as the suite names it: its application, as an index into the scenario's
    applications (0 is the first, and most scenarios have only that one), and its number there.
    Shown as the number alone in the first application and as `<n>:<number>` in the n-th
    (counted from 1, as the applications' names are), so `message 3:2/17` is message 17 of chat 2
    of the third application."""
    app: int
    number: int

    def __str__(self) -> str:
        return str(self.number) if self.app == 0 else f"{self.app + 1}:{self.number}"


@dataclass
class Request:
    """One logical request, however many attempts it took."""
    kind: str                      # "application", "chat", "message" or "patch"
    key: str                       # Idempotency-Key (POST); also identifies the request
    chat: Chat = Chat(0, 0)
    number: Optional[int] = None   # the number a 201 gave, or the message a PATCH targets
    body: str = ""
    attempts: int = 0
    outcome: str = "pending"       # acked | unavailable | rejected
    final_status: str = ""
    sent_at: float = 0.0           # time.monotonic() when its latest attempt began
    acked_at: Optional[float] = None   # time.monotonic() of its acknowledgement


@dataclass
class MessageState:
    """What the row of an acknowledged message may hold: the last acknowledged body, or the body
    of a PATCH whose outcome is unknown (it timed out or failed with a 5xx, and may have been
    published all the same)."""
    creator: Request
    latest_body: str
    unconfirmed: Set[str] = field(default_factory=set)


class Ledger:
    """The ground truth the audit checks MySQL against: every answer the writers got."""

    def __init__(self) -> None:
        self.requests: List[Request] = []
        self.chat_acks: Dict[Chat, List[Request]] = collections.defaultdict(list)
        self.message_acks: Dict[Tuple[Chat, int], List[Request]] = collections.defaultdict(list)
        self.messages: Dict[Tuple[Chat, int], MessageState] = {}
        self.creation_by_body: Dict[str, Request] = {}
        self.attempt_statuses: collections.Counter = collections.Counter()
        self.latencies_ms: List[float] = []
        self.unavailable = 0
        self.rejected: collections.Counter = collections.Counter()
        self.patches_acked = 0

    def attempt(self, outcome: str, elapsed: float) -> None:
        self.attempt_statuses[outcome] += 1
        self.latencies_ms.append(elapsed * 1000.0)

    def ack_chat(self, req: Request, chat: Chat) -> None:
        req.outcome, req.number, req.chat = "acked", chat.number, chat
        self.chat_acks[chat].append(req)

    def ack_message(self, req: Request, number: int) -> None:
        req.outcome, req.number, req.acked_at = "acked", number, time.monotonic()
        key = (req.chat, number)
        self.message_acks[key].append(req)
        # The first acknowledgement defines the message; a second one for the same (chat,
        # number) is a duplicate number, reported by the audit.
        self.messages.setdefault(key, MessageState(req, req.body))

    def ack_patch(self, req: Request) -> None:
        req.outcome = "acked"
        self.patches_acked += 1
        self.messages[(req.chat, req.number)].latest_body = req.body

    def fail(self, req: Request) -> None:
        req.outcome = "unavailable"
        self.unavailable += 1
        if req.kind == "patch":
            self.messages[(req.chat, req.number)].unconfirmed.add(req.body)

    def reject(self, req: Request) -> None:
        req.outcome = "rejected"
        self.rejected[f"{req.kind}:{req.final_status}"] += 1

    @property
    def acknowledged(self) -> int:
        return sum(len(v) for v in self.chat_acks.values()) + \
            sum(len(v) for v in self.message_acks.values())


def unique_word(tag: str, seq: int, edit: int = 0) -> str:
    """A word that occurs in exactly one body: `u` only ever starts it and `z` ends it, so no
    word is a substring of another (u1x1z is not in u1x10z, u11x1z or u1x1e2z)."""
    return f"u{tag}x{seq}e{edit}z" if edit else f"u{tag}x{seq}z"


def message_body(tag: str, seq: int, edit: int = 0) -> str:
    prefix = f"w{tag}-{seq}" + (f" edit{edit}" if edit else "")
    return f"{prefix} lorem ipsum {unique_word(tag, seq, edit)} dolor sit amet consectetur"


WORD_RE = re.compile(r"\bu[a-z0-9]+?x\d+(?:e\d+)?z\b")
