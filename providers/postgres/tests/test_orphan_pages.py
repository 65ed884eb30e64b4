"""Issue 17, done when: ``mark-orphans`` finishes on a large tenant under a 3 s statement
timeout, with work linear in the tenant's size however few orphans it holds.

The store's connections run with ``statement_timeout = 3s``. No timing is asserted: the
properties checked are structural. Every batch (one transaction) examines at most
``batch_size`` derived items, each batch starts strictly after the last item the previous one
examined (keyset pagination: every derived item is examined exactly once per job), and the
page statement's plan is a ``LIMIT`` over a range scan of the partial index
``profile_fields_derived_by_id`` (migration 5), never a scan of the whole tenant. The former
batch (``_mark_orphans_batch``) bounded only the rows it marked and re-read the tenant's
derived items from the start on every batch.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest

from ccvault.batches import BatchProgress
from ccvault_postgres import PostgresProfileStore
from ccvault_postgres import _sql as sql

from .conftest import TIMED_NOW, insert_profiles

_PROFILES = 100
_DERIVED_PER_PROFILE = 80
_DERIVED = _PROFILES * _DERIVED_PER_PROFILE  # 8,000 derived fields in one tenant
_PLAIN_PER_PROFILE = 300  # and 30,000 fields derived from nothing
_ORPHAN_EVERY = 97  # one derived field in 97 names a source that does not exist
_BATCH = 700
_BASE = TIMED_NOW  # the clock of the timed_store fixture


async def _load_tenant(store: PostgresProfileStore, tenant: uuid.UUID) -> int:
    """``_PROFILES`` profiles, each with one source field, ``_DERIVED_PER_PROFILE`` fields
    derived from it (except every ``_ORPHAN_EVERY``-th, derived from a missing source) and
    ``_PLAIN_PER_PROFILE`` fields derived from nothing (generated on the server); returns the
    number of orphans."""
    collected = _BASE - timedelta(hours=1)
    async with store.connection() as conn:
        await insert_profiles(conn, tenant, collected, _PROFILES)
        columns = """
            (tenant_id, id, profile_id, name, value, value_type, source, source_metadata,
             status, verified, confidence, requires_confirmation, collected_at, updated_at,
             source_item_id, source_item_type)
        """
        await conn.execute(
            f"""
            INSERT INTO profile_fields {columns}
            SELECT p.tenant_id, gen_random_uuid(), p.id, 'origin', to_jsonb(1), 'number',
                   'user_provided', '{{}}'::jsonb, 'active', false, 1.0, false, $2, $2,
                   NULL, NULL
            FROM customer_profiles p WHERE p.tenant_id = $1
            """,
            tenant,
            collected,
        )
        await conn.execute(
            f"""
            INSERT INTO profile_fields {columns}
            SELECT p.tenant_id, gen_random_uuid(), p.id, 'derived_' || g, to_jsonb(g),
                   'number', 'user_provided', '{{}}'::jsonb, 'active', false, 1.0, false,
                   $2, $2,
                   CASE WHEN (row_number() OVER ()) % $4 = 0 THEN gen_random_uuid()
                        ELSE o.id END,
                   'profile_field'
            FROM customer_profiles p
            JOIN profile_fields o
              ON o.tenant_id = p.tenant_id AND o.profile_id = p.id AND o.name = 'origin'
            CROSS JOIN generate_series(1, $3) g
            WHERE p.tenant_id = $1
            """,
            tenant,
            collected,
            _DERIVED_PER_PROFILE,
            _ORPHAN_EVERY,
        )
        # and more items derived from nothing (collected from the user): the derived ones
        # are a minority a scan of the tenant's primary key would have to skip
        await conn.execute(
            f"""
            INSERT INTO profile_fields {columns}
            SELECT p.tenant_id, gen_random_uuid(), p.id, 'plain_' || g, to_jsonb(g), 'number',
                   'user_provided', '{{}}'::jsonb, 'active', false, 1.0, false, $2, $2,
                   NULL, NULL
            FROM customer_profiles p CROSS JOIN generate_series(1, $3) g
            WHERE p.tenant_id = $1
            """,
            tenant,
            collected,
            _PLAIN_PER_PROFILE,
        )
        await conn.execute("ANALYZE profile_fields")
        orphans: int = await conn.fetchval(
            """
            SELECT count(*) FROM profile_fields d
            WHERE d.tenant_id = $1 AND d.source_item_id IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM profile_fields s
                WHERE s.tenant_id = $1 AND s.id = d.source_item_id)
            """,
            tenant,
        )
    return orphans


async def test_each_batch_examines_at_most_batch_size_items_each_item_once(
    timed_store: PostgresProfileStore,
) -> None:
    tenant = uuid.uuid4()
    orphans = await _load_tenant(timed_store, tenant)
    assert 0 < orphans < _DERIVED // 50  # few orphans spread over many derived items
    reports: list[BatchProgress] = []
    marked = await timed_store.mark_orphans(tenant, batch_size=_BATCH, progress=reports.append)
    assert marked == orphans
    examined = [r.examined for r in reports]
    assert all(n is not None and n <= _BATCH for n in examined)
    # keyset: the job reads every derived item exactly once, in ceil(_DERIVED / _BATCH)
    # pages (a full last page is followed by one empty one)
    assert sum(n or 0 for n in examined) == _DERIVED
    full, rest = divmod(_DERIVED, _BATCH)
    assert examined == [_BATCH] * full + [rest]
    # each batch resumes strictly after the previous one's last item
    positions = [r.resume_after for r in reports]
    assert positions[-1] is None and all(p is not None for p in positions[:-1])
    ids = [uuid.UUID(str(p).removeprefix("field:")) for p in positions[:-1]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # batches marking fewer than batch_size (all of them: orphans are rare) do not end it
    assert all(r.rows < _BATCH for r in reports) and len(reports) == full + 1
    async with timed_store.connection() as conn:
        left = await conn.fetchval(
            "SELECT count(*) FROM profile_fields WHERE tenant_id = $1 AND status = 'orphaned'",
            tenant,
        )
    assert left == orphans
    assert await timed_store.mark_orphans(tenant, batch_size=_BATCH) == 0


async def test_a_job_resumed_from_a_reported_position_reads_only_what_follows(
    timed_store: PostgresProfileStore,
) -> None:
    tenant = uuid.uuid4()
    orphans = await _load_tenant(timed_store, tenant)
    reports: list[BatchProgress] = []

    def stop_after_three(report: BatchProgress) -> None:
        reports.append(report)
        if report.batch == 3:
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        await timed_store.mark_orphans(tenant, batch_size=_BATCH, progress=stop_after_three)
    first = sum(r.rows for r in reports)
    rest: list[BatchProgress] = []
    assert (
        await timed_store.mark_orphans(
            tenant, batch_size=_BATCH, start_after=reports[-1].resume_after, progress=rest.append
        )
        == orphans - first
    )
    assert sum(r.examined or 0 for r in rest) == _DERIVED - 3 * _BATCH


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(_nodes(child))
    return found


@pytest.mark.parametrize("first", [True, False], ids=["first_page", "next_page"])
async def test_the_page_is_a_limited_range_scan_of_the_derived_items_index(
    timed_store: PostgresProfileStore, first: bool
) -> None:
    tenant = uuid.uuid4()
    await _load_tenant(timed_store, tenant)
    async with timed_store.connection() as conn:
        after = None if first else uuid.UUID(int=2**127)  # the middle of the id space
        raw = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + sql.MARK_ORPHAN_FIELDS_PAGE[first],
            tenant,
            _BASE,
            after,
            _BATCH,
        )
    plan = json.loads(raw)[0]["Plan"]
    nodes = _nodes(plan)
    limits = [n for n in nodes if n["Node Type"] == "Limit"]
    scans = [
        n
        for limit in limits
        for n in _nodes(limit)
        if n.get("Index Name") == "profile_fields_derived_by_id"
    ]
    assert scans, f"no LIMIT over the derived_by_id index: {[n['Node Type'] for n in nodes]}"
    assert all(n["Node Type"] in ("Index Scan", "Index Only Scan") for n in scans)
    # no node reads a table sequentially; the only sorts are over the page itself
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"]
    for sort in (n for n in nodes if n["Node Type"] == "Sort"):
        assert {c["Node Type"] for c in sort.get("Plans", [])} == {"CTE Scan"}
