"""The chaos run's five checks: what the producer sent against what PostgreSQL and the Market
hold."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from tests.smoke.producer import COUNT_MAX, Ledger, clamp

Key = tuple[int, str]


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    ok: bool
    detail: str


@dataclass
class Facts:
    """What the run's services hold at the end."""

    change_log: int
    rejected: int
    db_values: dict[Key, int]
    pending: int
    parked: int
    market: dict[int, dict[str, int]]  # campaign -> sku -> count
    stats: dict[str, Any]
    notes: list[str] = field(default_factory=list)


_OUTBOX_STATE = text("""
    SELECT (SELECT count(*) FROM change_log),
           (SELECT count(*) FROM rejected),
           (SELECT count(*) FROM stock WHERE version > acked_version),
           (SELECT count(*) FROM push_claim WHERE lease_until > clock_timestamp())
""")


def outbox_state(engine: Engine) -> tuple[int, int, int, int]:
    """(change_log rows, rejected rows, pending keys, live claims)."""
    with engine.connect() as conn:
        row = conn.execute(_OUTBOX_STATE).one()
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def collect(engine: Engine, state: dict[str, Any], stats: dict[str, Any]) -> Facts:
    with engine.connect() as conn:
        change_log, rejected, pending, _ = conn.execute(_OUTBOX_STATE).one()
        parked = conn.execute(
            text("SELECT count(*) FROM stock WHERE parked_version IS NOT NULL")
        ).scalar_one()
        values = {
            (int(g), str(s)): int(v)
            for g, s, v in conn.execute(text("SELECT group_id, sku, value FROM stock"))
        }
    market = {
        int(campaign): {sku: int(entry["count"]) for sku, entry in skus.items()}
        for campaign, skus in state["campaigns"].items()
    }
    return Facts(int(change_log), int(rejected), values, int(pending), int(parked), market, stats)


def _examples(items: Iterable[Any], limit: int = 3) -> str:
    shown = list(items)[:limit]
    return ", ".join(repr(i) for i in shown)


def market_values(ledger: Ledger, facts: Facts, groups: list[list[int]]) -> Verdict:
    expected = {key: clamp(v) for key, v in ledger.expected_values().items()}
    held = {(c, sku): n for c, skus in facts.market.items() for sku, n in skus.items()}
    wrong = [(k, expected[k], held[k]) for k in expected if k in held and held[k] != expected[k]]
    missing = [k for k in expected if k not in held]
    extra = [k for k in held if k not in expected]
    followers = [c for g in groups for c in g[1:] if facts.market.get(c)]
    ok = not (wrong or missing or extra or followers)
    detail = f"{len(expected)} keys: {len(expected) - len(wrong) - len(missing)} equal"
    if wrong:
        detail += f"; {len(wrong)} differ (key, expected, held): {_examples(wrong)}"
    if missing:
        detail += f"; {len(missing)} missing: {_examples(missing)}"
    if extra:
        detail += f"; {len(extra)} unexpected: {_examples(extra)}"
    if followers:
        detail += f"; sent to group followers {followers}"
    return Verdict("1 Market values = contract", ok, detail)


def exactly_once(ledger: Ledger, facts: Facts) -> Verdict:
    expected = ledger.expected_values()
    differ = [
        (k, v, facts.db_values.get(k)) for k, v in expected.items() if facts.db_values.get(k) != v
    ]
    extra = [k for k in facts.db_values if k not in expected]
    ok = (
        facts.change_log == len(ledger.valid)
        and facts.rejected == len(ledger.invalid)
        and not differ
        and not extra
        and ledger.unconfirmed == 0
    )
    detail = (
        f"change_log {facts.change_log} / unique valid sent {len(ledger.valid)}; "
        f"refusals {facts.rejected} / invalid sent {len(ledger.invalid)}; "
        f"outbox values differing {len(differ)}"
    )
    if differ:
        detail += f" (key, expected, outbox): {_examples(differ)}"
    if extra:
        detail += f"; unexpected keys {len(extra)}: {_examples(extra)}"
    if ledger.unconfirmed:
        detail += f"; {ledger.unconfirmed} messages never confirmed by the broker (inconclusive)"
    return Verdict("2 nothing lost or doubled", ok, detail)


def page_rules(facts: Facts) -> Verdict:
    by_status = facts.stats["requests_by_status"]
    bad = by_status.get("400", 0)
    detail = f"400 answers {bad}; parked keys {facts.parked}"
    return Verdict("3 no request broke the page", bad == 0 and facts.parked == 0, detail)


def rolling_minute(facts: Facts, limit: int) -> Verdict:
    per_campaign = {
        int(c): s["max_skus_accepted_in_window"] for c, s in facts.stats["campaigns"].items()
    }
    over = {c: n for c, n in per_campaign.items() if n > limit}
    window_420 = facts.stats.get("rate_limited", 0)
    parallel_420 = facts.stats.get("parallel_limited", 0)
    injected_420 = facts.stats["injected"].get("420", 0)
    detail = (
        f"max SKUs accepted in 60 s per campaign {per_campaign} (limit {limit}); "
        f"sandbox 420s for the window {window_420}, for parallel requests {parallel_420}, "
        f"injected {injected_420}"
    )
    return Verdict("4 no minute over the limit", not over and window_420 == 0, detail)


def no_stale(facts: Facts) -> Verdict:
    stale = facts.stats["stale_overwrites"]
    per_campaign = {c: s["stale_overwrites"] for c, s in facts.stats["campaigns"].items()}
    return Verdict("5 no stale overwrite", stale == 0, f"stale_overwrites {stale} {per_campaign}")


def verdicts(ledger: Ledger, facts: Facts, groups: list[list[int]], limit: int) -> list[Verdict]:
    return [
        market_values(ledger, facts, groups),
        exactly_once(ledger, facts),
        page_rules(facts),
        rolling_minute(facts, limit),
        no_stale(facts),
    ]


def figures(ledger: Ledger, facts: Facts) -> dict[str, Any]:
    stats = facts.stats
    by_status = stats["requests_by_status"]
    injected = stats["injected"]
    return {
        "messages sent (confirmed)": ledger.messages_sent,
        "changes sent (with duplicates)": ledger.changes_sent,
        "unique valid changes": len(ledger.valid),
        "invalid changes": len(ledger.invalid),
        "keys (of them clamped to 0 / to 2e9)": _keys_clamped(ledger),
        "whole messages resent (same task id)": ledger.message_resends,
        "changes resent (same event_id)": ledger.event_resends,
        "publish retries (no confirm)": ledger.publish_retries,
        "Market requests": stats["requests"],
        "Market 200s": by_status.get("200", 0),
        "Market 420s (injected / window / parallel)": (
            f"{by_status.get('420', 0)} ({injected.get('420', 0)} / "
            f"{stats.get('rate_limited', 0)} / {stats.get('parallel_limited', 0)})"
        ),
        "Market 5xx": sum(n for s, n in by_status.items() if s.startswith("5")),
        "dropped before / after applying": (
            f"{injected.get('drop_before', 0)} / {injected.get('drop_after', 0)}"
        ),
        "SKUs accepted by the Market": stats["skus_accepted"],
        "max parallel requests seen": max(
            (s["max_parallel_seen"] for s in stats["campaigns"].values()), default=0
        ),
    }


def worker_log_figures(log: Path) -> dict[str, Any]:
    """What the worker's log shows the faults did (evidence that they hit)."""
    lines = log.read_text(errors="replace") if log.exists() else ""
    outcomes = Counter(
        re.sub(r"wait [0-9.]+s", "wait", m) for m in re.findall(r"'outcome': '([^']*)'", lines)
    )
    stored = re.findall(r"stored_message .*?applied=(\d+) duplicates=(\d+)", lines)
    return {
        "worker: messages stored / changes applied / duplicates ignored": (
            f"{len(stored)} / {sum(int(a) for a, _ in stored)} / {sum(int(d) for _, d in stored)}"
        ),
        "worker: push outcomes": dict(outcomes.most_common()),
        "worker: database unavailable (message requeued)": lines.count("database_unavailable"),
        "worker: broker connection lost": lines.count("Connection to broker lost"),
    }


def _keys_clamped(ledger: Ledger) -> str:
    values = ledger.expected_values().values()
    low = sum(1 for v in values if v < 0)
    high = sum(1 for v in values if v > COUNT_MAX)
    return f"{len(values)} ({low} / {high})"


def format_table(verdicts_: list[Verdict], figures_: dict[str, Any]) -> str:
    """The verdicts and figures as the report's table."""
    width = max(len(v.name) for v in verdicts_)
    lines = ["=== verdict"]
    lines += [f"  {v.name:<{width}}  {'PASS' if v.ok else 'FAIL'}  {v.detail}" for v in verdicts_]
    lines.append("=== figures")
    fig_width = max(len(k) for k in figures_)
    lines += [f"  {name:<{fig_width}}  {value}" for name, value in figures_.items()]
    return "\n".join(lines)
