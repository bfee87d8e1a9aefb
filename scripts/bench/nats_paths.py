#!/usr/bin/env python3
"""What a whole event path costs nats-server, in CPU µs per event from /proc, by stream topology
(issue 33's breakdown): the bare path carrying the guarantee (a limits stream, a subject per
number published with `Nats-Expected-Last-Subject-Sequence: 0`, one consumer acking each event),
and Confab's events stream (interest retention: an event leaves at its last ack), with and without
the live stream sourced from it, with an idle second consumer (as `../shared/bench/side-by-side`
leaves the indexer's), and with the live copy published by a client instead of sourced: one event
per message, or 2 or 5 events of a chat per message (what a writer copying each persisted batch
chat by chat would send).

    python3 scripts/bench/nats_paths.py [rounds]      # NATS 2.10+ with JetStream on 127.0.0.1:4222

Each variant publishes 30,000 260-byte events with 64 unacknowledged at a time, then consumes and
acks them all in pulls of 500, and waits until the live stream (if any) holds every event; the
server's CPU over all of it, divided by the events, is the figure. Streams EXP and EXPL are
created and deleted here. The client is the same for every variant, so differences are the
server's. Companion of nats_costs.py, which prices single mechanisms (a header, an ack policy).
"""
import json
import sys
import time

from nats_costs import EXPECT_NEW, TICK_US, TRACEPARENT, Nats, server_ticks

EVENTS = 30_000
CREATION = lambda i: f"exp.message.created.1.{i % 100}.{i}"  # noqa: E731
LIVE_TRANSFORM = {"src": "exp.message.*.*.*.*", "dest": "live.{{wildcard(2)}}.{{wildcard(3)}}"}


def create(nats, kind, name, config):
    answer = nats.request(f"$JS.API.{kind}.CREATE.{name}", json.dumps(config).encode())
    assert b'"error"' not in answer, answer


def consumer(nats, durable):
    create(nats, "CONSUMER.DURABLE", f"EXP.{durable}",
           {"stream_name": "EXP", "config": {"durable_name": durable, "ack_policy": "explicit",
                                             "max_ack_pending": 100_000}})


def messages(nats, stream):
    return json.loads(nats.request(f"$JS.API.STREAM.INFO.{stream}"))["state"]["messages"]


def path_cost(label, retention, live=None, idle_consumer=False, headers=(EXPECT_NEW, TRACEPARENT),
              live_storage="file", group=1):
    nats = Nats()
    for stream in ("EXPL", "EXP"):
        nats.request(f"$JS.API.STREAM.DELETE.{stream}")
    create(nats, "STREAM", "EXP", {"name": "EXP", "subjects": ["exp.>"], "storage": "file",
                                   "retention": retention, "num_replicas": 1})
    consumer(nats, "p")
    if idle_consumer:
        consumer(nats, "idle")
    live_config = {"name": "EXPL", "storage": live_storage, "retention": "limits",
                   "max_age": 3600 * 10**9, "num_replicas": 1}
    if live == "source":
        create(nats, "STREAM", "EXPL",
               live_config | {"sources": [{"name": "EXP", "subject_transforms": [LIVE_TRANSFORM]}]})
    elif live == "publish":
        create(nats, "STREAM", "EXPL", live_config | {"subjects": ["live.>"]})
    time.sleep(0.3)
    before = server_ticks()
    nats.publish_all(CREATION, list(headers), EVENTS)
    if live == "publish":
        # `group` events of a chat in one live message, as a writer batching them would send
        nats.publish_all(lambda i: f"live.1.{i % 100}", [], EVENTS // group, window=256,
                         size=260 * group)
    nats.pull_acked("p", EVENTS)
    if live == "source":
        while messages(nats, "EXPL") < EVENTS:
            time.sleep(0.05)
    time.sleep(0.3)  # the server applies the last acks
    us = (server_ticks() - before) * TICK_US / EVENTS
    print(f"{label:62s} {us:5.1f} µs per event (events stream keeps {messages(nats, 'EXP')})",
          flush=True)
    for stream in ("EXPL", "EXP"):
        nats.request(f"$JS.API.STREAM.DELETE.{stream}")


if __name__ == "__main__":
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        path_cost("bare + guarantee: limits, one consumer", "limits", headers=(EXPECT_NEW,))
        path_cost("limits, Confab's headers (+ traceparent)", "limits")
        path_cost("interest, one consumer (an event leaves at its ack)", "interest")
        path_cost("interest + live stream sourced (Confab, no indexer)", "interest", "source")
        path_cost("interest + idle consumer + live sourced (shared side-by-side)", "interest",
                  "source", idle_consumer=True)
        path_cost("interest + live copy published by a client", "interest", "publish")
        path_cost("interest + live stream sourced, in memory", "interest", "source",
                  live_storage="memory")
        for group in (2, 5):
            path_cost(f"interest + live copy published, {group} events per message", "interest",
                      "publish", group=group)
