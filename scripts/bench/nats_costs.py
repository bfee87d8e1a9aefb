#!/usr/bin/env python3
"""What a JetStream publish and a consumed event cost nats-server, in CPU µs from /proc, by the
choices Confab makes (issue 13's accounting): a subject per creation (which the stream indexes)
against one per chat, the `Nats-Expected-Last-Subject-Sequence: 0` condition, a `traceparent`
header, and explicit per-event acks against one `AckPolicy::All` ack per batch.

    python3 scripts/bench/nats_costs.py [rounds]      # NATS with JetStream on 127.0.0.1:4222

Speaks the NATS protocol over a socket (no client library), publishes 40,000 260-byte events
per variant with 64 unacknowledged at a time, on a stream EXP it creates and deletes. The client
is the same for every variant, so the differences between variants are the server's.
"""
import json
import os
import socket
import subprocess
import sys
import time


def server_ticks():
    pid = subprocess.run(["pgrep", "-x", "nats-server"], capture_output=True, text=True,
                         check=True).stdout.split()[0]
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


class Nats:
    def __init__(self):
        self.sock = socket.create_connection(("127.0.0.1", 4222))
        self.buf = b""
        self.line()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                          b'"no_responders":true}\r\nSUB _I.* 1\r\nPING\r\n')
        while self.line() != b"PONG":
            pass
        self.sent = 0

    def line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 20)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def message(self):
        """The next message: (reply subject or None, payload)."""
        while True:
            line = self.line()
            if line.startswith((b"MSG", b"HMSG")):
                parts = line.split()
                size = int(parts[-1])
                while len(self.buf) < size + 2:
                    self.buf += self.sock.recv(1 << 20)
                body, self.buf = self.buf[:size], self.buf[size + 2:]
                reply = parts[3] if len(parts) >= (5 if line.startswith(b"MSG") else 6) else None
                return reply, body
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")

    def request(self, subject, payload=b""):
        self.sock.sendall(b"PUB %s _I.r %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
        return self.message()[1]

    def publish(self, subject, headers, payload):
        self.sent += 1
        if headers:
            block = b"NATS/1.0\r\n" + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n"
            return b"HPUB %s _I.%d %d %d\r\n%s%s\r\n" % (
                subject.encode(), self.sent, len(block), len(block) + len(payload), block, payload)
        return b"PUB %s _I.%d %d\r\n%s\r\n" % (subject.encode(), self.sent, len(payload), payload)

    def pull_acked(self, durable, n, batch=500, ack="explicit"):
        """Pulls n stored events from consumer `durable` of stream EXP, `batch` per pull, and acks
        each (`explicit`) or each pull's last (`all`); returns once the server has read the acks."""
        done = 0
        while done < n:
            pull = json.dumps({"batch": batch, "no_wait": True}).encode()
            self.sock.sendall(b"PUB $JS.API.CONSUMER.MSG.NEXT.EXP.%s _I.f %d\r\n%s\r\n"
                              % (durable.encode(), len(pull), pull))
            replies = [self.message()[0] for _ in range(min(batch, n - done))]
            done += len(replies)
            acks = replies if ack == "explicit" else replies[-1:]
            self.sock.sendall(b"".join(b"PUB %s 0\r\n\r\n" % r for r in acks))
        self.sock.sendall(b"PING\r\n")
        while self.line() != b"PONG":
            pass

    def fresh_stream(self):
        self.request("$JS.API.STREAM.DELETE.EXP")
        config = {"name": "EXP", "subjects": ["exp.>"], "storage": "file", "retention": "limits",
                  "discard": "old", "max_age": 0, "num_replicas": 1}
        answer = self.request("$JS.API.STREAM.CREATE.EXP", json.dumps(config).encode())
        assert b'"error"' not in answer, answer

    def publish_all(self, subject, headers, n, window=64, size=260):
        """Publishes n events of `size` bytes with `window` unacknowledged at a time; returns the
        errors."""
        payload, sent, acked, errors = b"x" * size, 0, 0, 0
        while acked < n:
            batch = []
            while sent < n and sent - acked < window:
                batch.append(self.publish(subject(sent), headers, payload))
                sent += 1
            if batch:
                self.sock.sendall(b"".join(batch))
            errors += b'"error"' in self.message()[1]
            acked += 1
        return errors


TRACEPARENT = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
EXPECT_NEW = (b"Nats-Expected-Last-Subject-Sequence", b"0")
PER_CHAT = lambda i: f"exp.c.{i % 100}"  # noqa: E731
PER_NUMBER = lambda i: f"exp.n.1.{i % 100}.{i}"  # noqa: E731
PUBLISHES = [
    ("publish: subject per chat (bare path)", PER_CHAT, []),
    ("publish: subject per chat + traceparent", PER_CHAT, [TRACEPARENT]),
    ("publish: subject per creation", PER_NUMBER, []),
    ("publish: per creation + expected-last-subject-seq", PER_NUMBER, [EXPECT_NEW]),
    ("publish: as Confab (+ traceparent)", PER_NUMBER, [EXPECT_NEW, TRACEPARENT]),
]


def publish_cost(name, subject, headers, n=40_000):
    nats = Nats()
    nats.fresh_stream()
    before, started = server_ticks(), time.time()
    errors = nats.publish_all(subject, headers, n)
    us = (server_ticks() - before) * TICK_US / n
    print(f"{name:52s} {us:5.1f} µs ({n / (time.time() - started):,.0f}/s, errors {errors})",
          flush=True)
    nats.request("$JS.API.STREAM.DELETE.EXP")


def consume_cost(policy, n=40_000, batch=500):
    nats = Nats()
    nats.fresh_stream()
    nats.publish_all(PER_CHAT, [], n, window=256)
    config = {"stream_name": "EXP", "config": {"durable_name": "d", "ack_policy": policy,
                                               "max_ack_pending": 100_000}}
    answer = nats.request("$JS.API.CONSUMER.DURABLE.CREATE.EXP.d", json.dumps(config).encode())
    assert b'"error"' not in answer, answer
    before = server_ticks()
    nats.pull_acked("d", n, batch, policy)
    time.sleep(0.5)  # the server applies the last acks
    us = (server_ticks() - before) * TICK_US / n
    print(f"{'consume, ack ' + policy:52s} {us:5.1f} µs per event", flush=True)
    nats.request("$JS.API.STREAM.DELETE.EXP")


if __name__ == "__main__":
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        for name, subject, headers in PUBLISHES:
            publish_cost(name, subject, headers)
        consume_cost("explicit")
        consume_cost("all")
