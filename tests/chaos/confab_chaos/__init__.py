"""The chaos suite's parts, behind the entry point ../chaos.py. Read them in this order:

- harness.py      the loopback host, progress log, HarnessError, deadlines, free ports, Options
- clients.py      HTTP/1.1, the NATS text protocol (JetStream API), the mysql CLI, Redis
                  commands (RESP) and redis-cli
- processes.py    child processes in their own process groups, readiness, the watchdog
- servers.py      the private MariaDB, Redis (one node or a six-node Redis Cluster) and NATS
                  (one node or a three-node cluster)
- environment.py  one scenario's servers plus the Confab services, configured and started
- ledger.py       every answer the writers got: the ground truth of the audit
- load.py         the writers, retries with Idempotency-Key, set-up before the faults
- faults.py       SIGKILL and restart, the stream leader's loss, a Redis master's failover,
                  resharding, the fault schedule
- audit.py        MySQL, counts and search checked against the ledger
- report.py       the summary line, examples of findings, report.json
- scenarios.py    faults, redis-loss-lagging, cluster and redis-cluster, and running one end
                  to end
"""
