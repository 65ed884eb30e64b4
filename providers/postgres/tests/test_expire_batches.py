"""Issue 17, done when: ``expire`` finishes on a large tenant under a 3 s statement timeout.

The store's connections run with ``statement_timeout = 3s`` (set by the provider through
asyncpg's ``server_settings`` from ``statement_timeout_seconds``). No timing is asserted: the
property checked is structural. Every batch (one statement, its own transaction) touches at
most ``batch_size`` rows, whatever the tenant's size, so no statement grows with the tenant;
and the whole tenant ends EXPIRED. The contrast with the former single UPDATE over the tenant
is shown deterministically: while one due row is held by another transaction, that single
statement waits for the lock past the timeout and rolls back with 0 rows expired, where the
batched job skips the held row and expires every other one (a rerun takes the last row once
it is free).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest

from ccvault.batches import BatchProgress
from ccvault_postgres import PostgresProfileStore

from .conftest import TIMED_NOW, insert_profiles

_PROFILES = 250
_FIELDS_PER_PROFILE = 80
_ROWS = _PROFILES * _FIELDS_PER_PROFILE  # 20,000 due versions in one tenant
_BATCH = 1_500
_BASE = TIMED_NOW  # the clock of the timed_store fixture

# the former implementation: one UPDATE over every due row of the tenant
_SINGLE_UPDATE = """
UPDATE profile_fields SET status = 'expired', updated_at = $2
WHERE tenant_id = $1 AND status = 'active' AND expires_at <= $2
"""


async def _load_due_tenant(store: PostgresProfileStore, tenant: uuid.UUID) -> None:
    """``_PROFILES`` profiles with ``_FIELDS_PER_PROFILE`` due fields each, generated on the
    server (generate_series), all collected two hours and expired one hour before _BASE."""
    collected, expires = _BASE - timedelta(hours=2), _BASE - timedelta(hours=1)
    async with store.connection() as conn:
        await insert_profiles(conn, tenant, collected, _PROFILES)
        await conn.execute(
            """
            INSERT INTO profile_fields
                (tenant_id, id, profile_id, name, value, value_type, source, source_metadata,
                 status, verified, confidence, requires_confirmation, collected_at, updated_at,
                 expires_at)
            SELECT p.tenant_id, gen_random_uuid(), p.id, 'field_' || g, to_jsonb(g), 'number',
                   'user_provided', '{}'::jsonb, 'active', false, 1.0, false, $2, $2, $3
            FROM customer_profiles p CROSS JOIN generate_series(1, $4) g
            WHERE p.tenant_id = $1
            """,
            tenant,
            collected,
            expires,
            _FIELDS_PER_PROFILE,
        )
        await conn.execute("ANALYZE profile_fields")


async def _statuses(store: PostgresProfileStore, tenant: uuid.UUID) -> dict[str, int]:
    async with store.connection() as conn:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM profile_fields WHERE tenant_id = $1 GROUP BY status",
            tenant,
        )
    return {row["status"]: int(row["n"]) for row in rows}


async def test_expire_covers_a_large_tenant_in_batches_each_of_at_most_batch_size_rows(
    timed_store: PostgresProfileStore,
) -> None:
    tenant = uuid.uuid4()
    await _load_due_tenant(timed_store, tenant)
    reports: list[BatchProgress] = []
    expired = await timed_store.expire_stale_fields(
        tenant, batch_size=_BATCH, progress=reports.append, estimated_total=_ROWS
    )
    assert expired == _ROWS
    # every batch one statement of at most _BATCH rows: 13 full batches, then the rest
    full, rest = divmod(_ROWS, _BATCH)
    assert [r.rows for r in reports] == [_BATCH] * full + [rest]
    assert max(r.rows for r in reports) <= _BATCH
    assert reports[-1].done == _ROWS and reports[-1].finished
    assert await _statuses(timed_store, tenant) == {"expired": _ROWS}


async def test_a_held_row_times_the_single_update_out_but_not_the_batched_job(
    timed_store: PostgresProfileStore, pg_dsn: str
) -> None:
    tenant = uuid.uuid4()
    await _load_due_tenant(timed_store, tenant)
    schema = timed_store.settings.db_schema
    holder = await asyncpg.connect(pg_dsn, server_settings={"search_path": schema})
    try:
        held = await holder.fetchval(
            "SELECT id FROM profile_fields WHERE tenant_id = $1 ORDER BY id LIMIT 1", tenant
        )
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM profile_fields WHERE id = $1 FOR UPDATE", held)
        # the former single statement waits for the held row until statement_timeout cancels
        # it: rolled back, 0 rows expired, however often it is retried
        async with timed_store.connection() as conn:
            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.execute(_SINGLE_UPDATE, tenant, _BASE)
        assert await _statuses(timed_store, tenant) == {"active": _ROWS}
        # batched: the held row is skipped, every other row is expired, batch by batch
        reports: list[BatchProgress] = []
        expired = await timed_store.expire_stale_fields(
            tenant, batch_size=_BATCH, progress=reports.append
        )
        assert expired == _ROWS - 1
        assert max(r.rows for r in reports) <= _BATCH
        assert await _statuses(timed_store, tenant) == {"expired": _ROWS - 1, "active": 1}
        await transaction.rollback()
    finally:
        await holder.close()
    # resumable: once the row is free, a rerun finishes the tenant
    assert await timed_store.expire_stale_fields(tenant, batch_size=_BATCH) == 1
    assert await _statuses(timed_store, tenant) == {"expired": _ROWS}


async def test_a_job_interrupted_between_batches_is_finished_by_a_rerun(
    timed_store: PostgresProfileStore,
) -> None:
    tenant = uuid.uuid4()
    await _load_due_tenant(timed_store, tenant)

    def stop_after_three(report: BatchProgress) -> None:
        if report.batch == 3:
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        await timed_store.expire_stale_fields(tenant, batch_size=_BATCH, progress=stop_after_three)
    # exactly three committed batches, nothing half-done
    assert await _statuses(timed_store, tenant) == {
        "expired": 3 * _BATCH,
        "active": _ROWS - 3 * _BATCH,
    }
    assert await timed_store.expire_stale_fields(tenant, batch_size=_BATCH) == _ROWS - 3 * _BATCH
    assert await _statuses(timed_store, tenant) == {"expired": _ROWS}
