"""What a scenario reports: the one summary line on stdout, examples of every finding on stderr,
and report.json beside the logs."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Dict, List, Optional

from .audit import AuditResult
from .faults import FaultCounter
from .harness import log
from .load import Context


def percentile(sorted_values: List[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    # Nearest rank: the smallest value with at least p % of the values at or below it.
    rank = math.ceil(p / 100.0 * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, rank))]


def summary_fields(ctx: Context, counter: FaultCounter, result: Optional[AuditResult],
                   error: Optional[str], started: float) -> Dict[str, object]:
    """The summary line's fields, in their order; `ok` is the scenario's verdict."""
    ledger = ctx.ledger
    s = ledger.attempt_statuses
    latencies = sorted(ledger.latencies_ms)
    attempts = sum(s.values())
    fields: Dict[str, object] = {
        "ok": False,
        "faults": counter.injected,
        "acknowledged": ledger.acknowledged,
    }
    if result is not None:
        f = result.findings
        fields.update({"lost": len(f.lost), "misplaced": len(f.misplaced),
                       "duplicated": len(f.duplicated),
                       "duplicated_bodies": len(f.duplicated_bodies)})
    fields.update({
        "unavailable": ledger.unavailable,
        "503s": s["503"],
        "share_503": f"{100.0 * s['503'] / attempts:.2f}%" if attempts else "0.00%",
        "timeouts": s["timeout"],
        "other": sum(ledger.rejected.values()),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(latencies[-1], 1) if latencies else 0.0,
    })
    if result is not None:
        fields.update({"counts_ok": result.counts_ok, "search_ok": result.search_ok})
    fields.update({
        "idempotency": {True: "supported", False: "ignored", None: "unknown"}[ctx.idempotency],
        "reseeds": "?" if ctx.reseeds is None else ctx.reseeds,
        "collisions": "?" if ctx.collisions is None else ctx.collisions,
    })
    # The scenario's own fields (redis-cluster: failover_s, writes_resume_s, …).
    fields.update({name: "?" if value is None else value
                   for name, value in ctx.extra_fields.items()})
    fields.update({
        "exits": ctx.env.unexpected_exits(),
        "load_s": round(ctx.load_seconds, 1),
        "elapsed_s": round(time.monotonic() - started, 1),
    })
    ok = False
    if result is not None:
        f = result.findings
        # duplicated_bodies is not a failure: analyse() only puts rows there when the server
        # ignores Idempotency-Key (with support, a retry stored twice counts as duplicated).
        ok = (not f.lost and not f.misplaced and not f.duplicated and result.counts_ok
              and result.search_ok and not ctx.failures)
    else:
        fields["harness_error"] = error or "unknown"
    fields["ok"] = ok
    return fields


def summary_line(name: str, fields: Dict[str, object]) -> str:
    def fmt(value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return f"{value:.1f}"
        if isinstance(value, str) and (not value or re.search(r"[\s\"=]", value)):
            return json.dumps(value)
        return str(value)
    return "chaos scenario=" + name + "".join(f" {k}={fmt(v)}" for k, v in fields.items())


def report_details(name: str, ctx: Context, result: AuditResult, counter: FaultCounter) -> None:
    """The first examples of each finding, to stderr (the summary line only counts them)."""
    f = result.findings
    ledger = ctx.ledger
    log(f"{name}: faults injected: {', '.join(counter.labels) or 'none'}")
    log(f"{name}: patches acknowledged={ledger.patches_acked}, extra rows={f.extra_rows}, "
        f"persister caught up={result.caught_up}, rejected={dict(ledger.rejected)}, "
        f"attempt statuses={dict(ledger.attempt_statuses)}")
    log(f"{name}: search checked {result.search_checked} messages")
    for failure in ctx.failures:
        log(f"{name}: failed check: {failure}")
    for label, items in (("lost", f.lost), ("misplaced", f.misplaced),
                         ("duplicated", f.duplicated), ("duplicated_bodies", f.duplicated_bodies),
                         ("count mismatch", result.count_mismatches),
                         ("search missing", result.search_missing),
                         ("search error", result.search_errors)):
        for item in items[:5]:
            log(f"{name}: {label}: {item}")
        if len(items) > 5:
            log(f"{name}: {label}: … and {len(items) - 5} more")


def write_report(root: Path, name: str, fields: Dict[str, object], result: Optional[AuditResult],
                 ctx: Context) -> None:
    """A JSON report next to the logs (kept with --keep)."""
    ledger = ctx.ledger
    report = {"scenario": name, "summary": fields,
              "attempt_statuses": dict(ledger.attempt_statuses),
              "rejected": dict(ledger.rejected), "failed_checks": ctx.failures}
    if result is not None:
        report.update({k: getattr(result.findings, k)[:200]
                       for k in ("lost", "misplaced", "duplicated", "duplicated_bodies")})
        report.update({"count_mismatches": result.count_mismatches[:200],
                       "search_missing": result.search_missing[:200],
                       "search_errors": result.search_errors[:200]})
    try:
        (root / "report.json").write_text(json.dumps(report, indent=2, default=str))
    except OSError:
        pass
