"""What a drain pass costs: plans of the claim statements, idle campaigns, fairness.

Costs are asserted as plans and as numbers of database statements, never as wall-clock times
(the machine running the tests is shared and loaded).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event, text

from tests.integration.drain_support import put_changes
from worker import claims as claims_module
from worker.claims import Claim, Claims
from worker.drain_pass import run_pass
from worker.rate_limiter import RateLimiter

REFRESH_AFTER = 20 * 3600.0


def _claims(engine: Engine) -> Claims:
    return Claims(engine, RateLimiter(engine, 100_000, max_parallel=2), 60.0, REFRESH_AFTER)


def _acknowledged_keys(engine: Engine, campaigns: range, keys: int, acked_ago: str) -> None:
    """Keys the Market acknowledged `acked_ago`, and the campaigns' rows (sent to before)."""
    with engine.begin() as conn:
        conn.execute(
            text("""
                INSERT INTO stock (group_id, sku, abs_count, version, acked_version, acked_value,
                                   acked_at, changed_at)
                SELECT g, 'sku-' || i, i, 1, 1, i, now() - CAST(:ago AS interval),
                       now() - CAST(:ago AS interval) - interval '1 minute'
                FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) g,
                     generate_series(1, CAST(:keys AS int)) i
            """),
            {"first": campaigns.start, "last": campaigns.stop - 1, "keys": keys, "ago": acked_ago},
        )
        conn.execute(
            text("""
                INSERT INTO campaign (campaign_id, last_push_at)
                SELECT g, now() - CAST(:ago AS interval)
                FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) g
            """),
            {"first": campaigns.start, "last": campaigns.stop - 1, "ago": acked_ago},
        )


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def _explain(engine: Engine, statement: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The executed plan of one claim statement, in the claim transaction's own session setup;
    rolled back afterwards."""
    with engine.connect() as conn, conn.begin() as tx:
        conn.execute(claims_module._ORDERED_SCANS_ONLY)
        plan = conn.execute(
            text(f"EXPLAIN (ANALYZE, SETTINGS, FORMAT JSON) {statement.text}"), params
        ).scalar_one()
        tx.rollback()
    return dict(plan[0])


def _assert_no_jit_and_index_scans_only(plan: dict[str, Any]) -> None:
    assert "JIT" not in plan, plan.get("JIT")
    scans = [n for n in _plan_nodes(plan["Plan"]) if "Relation Name" in n]
    assert scans, plan
    for node in scans:
        if node["Node Type"] == "ModifyTable":
            continue
        assert node["Node Type"] in {"Index Scan", "Index Only Scan"}, (
            node["Relation Name"],
            node["Node Type"],
        )


def test_claim_statements_of_an_idle_campaign_use_indexes_and_no_jit(engine: Engine) -> None:
    # Given a campaign with 1,000 acknowledged keys, right after the load (no statistics yet)
    _acknowledged_keys(engine, range(7, 8), 1000, "1 hour")
    statements = {
        "claim": (claims_module._CLAIM, {"c": 7, "n": 2000, "claim": "x"}),
        "refresh": (
            claims_module._CLAIM_REFRESH,
            {"c": 7, "n": 2000, "claim": "x", "refresh_after": REFRESH_AFTER},
        ),
    }
    for analyzed in (False, True):
        if analyzed:
            with engine.begin() as conn:
                conn.execute(text("ANALYZE stock"))
        for name, (statement, params) in statements.items():
            # When the drain's claim statements run, as the service's connections run them
            plan = _explain(engine, statement, params)
            # Then they are planned without JIT and walk indexes only
            try:
                _assert_no_jit_and_index_scans_only(plan)
            except AssertionError as exc:
                raise AssertionError(f"{name} (analyzed={analyzed}): {exc}") from exc


@contextmanager
def _counted_statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_a_pass_over_idle_campaigns_visits_none_of_them(engine: Engine) -> None:
    # Given 300 campaigns whose 20 keys each were acknowledged an hour ago (nothing to refresh),
    # and 2 campaigns with pending keys
    _acknowledged_keys(engine, range(1000, 1300), 20, "1 hour")
    put_changes(engine, [{"campaign_id": c, "sku": "new", "count": 5} for c in (1, 2)])
    box = _claims(engine)
    enqueued: list[Claim] = []
    # When a drain pass runs
    with _counted_statements(engine) as statements:
        result = run_pass(box, 60.0, 2.0, enqueued.extend)
    # Then only the two campaigns with work were claimed for, in a handful of statements:
    # the cost follows the work, not the 300 idle campaigns
    assert sorted(c.campaign_id for c in enqueued) == [1, 2]
    assert result.campaigns == 2
    assert len(statements) <= 25, len(statements)


def test_a_pass_does_not_visit_campaigns_whose_keys_live_claims_hold(engine: Engine) -> None:
    # Given 50 campaigns whose pending keys one pass claimed, their pushes still queued (a burst:
    # measured, 7 passes of 2 s each visited ~150 such campaigns for nothing, 8 statements each,
    # while the pushes they waited for ran at half speed; BENCHMARKS.md, "production shape")
    put_changes(
        engine,
        [{"campaign_id": c, "sku": f"k{n}", "count": n} for c in range(1, 51) for n in range(3)],
    )
    box = _claims(engine)
    enqueued: list[Claim] = []
    run_pass(box, 60.0, 2.0, enqueued.extend)
    assert len(enqueued) == 50
    # and a key that arrives afterwards in one of them
    put_changes(engine, [{"campaign_id": 7, "sku": "late", "count": 1}])
    # When the next pass runs while those claims are live
    with _counted_statements(engine) as statements:
        result = run_pass(box, 60.0, 2.0, enqueued.extend)
    # Then it visits none of them: their pushes' follow-up claims take what comes next
    assert (result.served, len(enqueued)) == (0, 50)
    assert len(statements) <= 2, len(statements)
    # and once campaign 7's push is done (acknowledged, its claim released), the late key is
    # claimed
    (seven,) = [c for c in enqueued if c.campaign_id == 7]
    box.acknowledge(7, seven.claim_id, box.read(7, seven.claim_id))
    box.release(7, seven.claim_id)
    run_pass(box, 60.0, 2.0, enqueued.extend)
    assert [(c.campaign_id, c.skus) for c in enqueued[50:]] == [(7, 1)]


def test_a_backlog_with_a_live_full_batch_still_gets_its_further_slots(engine: Engine) -> None:
    # Given a campaign with a backlog, one full batch of it claimed and still live
    put_changes(engine, [{"campaign_id": 1, "sku": f"big-{n}", "count": n} for n in range(9000)])
    box = _claims(engine)
    (first,) = box.claim(1, 60.0, max_batches=1)
    assert first.skus == 2000
    enqueued: list[Claim] = []
    # When a pass runs
    run_pass(box, 60.0, 2.0, enqueued.extend)
    # Then it fills the campaign's other slots (max_parallel 2, plus one waiting)
    assert [c.skus for c in enqueued] == [2000, 2000]


def test_a_campaign_due_for_refresh_is_found_among_idle_ones(engine: Engine) -> None:
    # Given 300 idle campaigns, one of whose keys were acknowledged 21 hours ago
    _acknowledged_keys(engine, range(1000, 1300), 20, "1 hour")
    _acknowledged_keys(engine, range(1300, 1301), 20, "21 hours")
    box = _claims(engine)
    enqueued: list[Claim] = []
    # When a drain pass runs
    run_pass(box, 60.0, 2.0, enqueued.extend)
    # Then that campaign's keys are claimed for their refresh, and no other campaign's
    assert {c.campaign_id for c in enqueued} == {1300}
    assert sum(c.skus for c in enqueued) == 20


def test_200_backlogged_campaigns_take_turns_and_a_big_backlog_takes_one_batch_a_pass(
    engine: Engine,
) -> None:
    # Given one campaign with a backlog of many batches and 200 campaigns with a few keys each
    put_changes(engine, [{"campaign_id": 1, "sku": f"big-{n}", "count": n} for n in range(9000)])
    put_changes(
        engine,
        [{"campaign_id": c, "sku": f"k{n}", "count": n} for c in range(2, 202) for n in range(3)],
    )
    box = _claims(engine)
    enqueued: list[Claim] = []
    big_batches_at_pass: list[int] = []
    # When passes run that time cuts short (a tiny budget: each serves a few campaigns, however
    # fast the machine), until every campaign has had a batch
    small = set(range(2, 202))
    passes = 0
    while not small <= {c.campaign_id for c in enqueued} and passes < 400:
        run_pass(box, 60.0, 0.01, enqueued.extend)
        passes += 1
        big_batches_at_pass.append(sum(1 for c in enqueued if c.campaign_id == 1))
    # Then every campaign got its first batch, each pass beginning where the last one stopped
    # (each small campaign once: none was served again before all had their turn)
    per_campaign = Counter(c.campaign_id for c in enqueued)
    assert small <= set(per_campaign), sorted(small - set(per_campaign))
    assert all(per_campaign[c] == 1 for c in small)
    assert sum(c.skus for c in enqueued if c.campaign_id != 1) == 600
    # and while they waited the big backlog took at most its one batch a pass, not their turns
    # (its further batches come only from time a pass has left once all were served)
    assert all(big <= n + 1 for n, big in enumerate(big_batches_at_pass[:-1])), big_batches_at_pass
    assert passes < 400


def test_a_v3_claim_reads_one_request_of_each_campaign_whatever_the_backlog(
    engine: Engine,
) -> None:
    # Given three v3 campaigns with 20,000 pending keys each, all changed at the same instant (as
    # a move into v3 leaves them)
    with engine.begin() as conn:
        conn.execute(
            text("""
                INSERT INTO stock (group_id, sku, abs_count, version, changed_at)
                SELECT g, 'sku-' || i, i, 1, now() - interval '1 minute'
                FROM generate_series(4001, 4003) g, generate_series(1, 20000) i
            """)
        )
    params = {"campaigns": [4001, 4002, 4003], "n": 2000}
    # When the statement that picks one request's keys runs, as the service runs it
    plan = _explain(engine, claims_module._V3_CANDIDATES, params)
    # Then it reads at most one request of each campaign, and nothing in it is planned at a
    # disabled node's cost (which would JIT-compile it)
    reads = [n for n in _plan_nodes(plan["Plan"]) if n.get("Relation Name") == "stock"]
    assert reads and all(n["Actual Rows"] <= 2000 for n in reads), [
        (n["Node Type"], n["Actual Rows"], n["Actual Loops"]) for n in reads
    ]
    assert plan["Plan"]["Total Cost"] < 1e9, plan["Plan"]["Total Cost"]
    _assert_no_jit_and_index_scans_only(plan)
