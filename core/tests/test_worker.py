"""The background worker: sweeps, tenant claims on the real Redis, clean stop, the gauge."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from redis.asyncio import Redis

import ccvault
from ccvault import errors, metrics
from ccvault.batches import KeysetBatch
from ccvault.models import Channel, ItemStatus, ProfileField, SourceType, utcnow
from ccvault.settings import VaultSettings
from ccvault.store import ProfileStore
from ccvault.worker import FileTenantLease, RedisTenantLease, Worker
from ccvault_inmemory import InMemoryProfileStore

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    value = f"test-worker-{uuid4().hex}:"
    yield value
    client = Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{value}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def _settings(prefix: str, **profile: object) -> VaultSettings:
    return ccvault.load_settings(
        store_provider="inmemory",
        cache_enabled=False,
        auto_encrypt_pii=False,
        redis={"url": REDIS_URL, "key_prefix": prefix},
        **profile,
    )


def _lease(prefix: str) -> RedisTenantLease:
    return RedisTenantLease(Redis.from_url(REDIS_URL), prefix)


async def _seed(store: ProfileStore, tenant: UUID, stale: int, fresh: int = 1) -> UUID:
    """A profile with ``stale`` expired fields, ``fresh`` live ones and one orphan."""
    pid = (await store.get_or_create(tenant, Channel.WEB, f"user-{uuid4().hex[:8]}")).id
    past = utcnow() - timedelta(seconds=5)
    for n in range(stale):
        await store.update_field(
            tenant, pid, ProfileField(name=f"old_{n}", value=n, expires_at=past)
        )
    for n in range(fresh):
        await store.update_field(tenant, pid, ProfileField(name=f"new_{n}", value=n))
    gone = ProfileField(name="source_doc", value="x")
    await store.update_field(tenant, pid, gone)
    await store.update_field(
        tenant,
        pid,
        ProfileField(
            name="derived",
            value="y",
            source_item_id=uuid4(),
            source_item_type=SourceType.PROFILE_FIELD,
        ),
    )
    return pid


# ---------------------------------------------------------------------------------------
# the lease
# ---------------------------------------------------------------------------------------


async def test_lease_is_exclusive_reentrant_and_lapses(prefix: str) -> None:
    a, b = _lease(prefix), _lease(prefix)
    tenant = uuid4()
    try:
        token = await a.acquire(tenant, 30)
        assert token is not None
        assert await b.acquire(tenant, 30) is None
        assert await a.acquire(tenant, 30) == token  # the holder may claim again
        assert not await b.renew(tenant, "not-the-token", 30)
        assert await a.renew(tenant, token, 0.05)
        # the claim lapses; poll with a deadline rather than sleeping a fixed time
        deadline = asyncio.get_running_loop().time() + 5
        while (won := await b.acquire(tenant, 30)) is None:
            assert asyncio.get_running_loop().time() < deadline, "the claim never lapsed"
            await asyncio.sleep(0.01)
        assert won == b.token
    finally:
        await a.aclose()
        await b.aclose()


async def test_lease_key_is_prefixed_and_hash_tagged_by_tenant(prefix: str) -> None:
    lease = _lease(prefix)
    tenant = uuid4()
    assert lease.key(tenant) == f"{prefix}ccvault:worker:{{{tenant}}}"
    await lease.aclose()


async def test_unreachable_redis_is_a_clear_error() -> None:
    settings = ccvault.load_settings(
        store_provider="inmemory",
        redis={"url": "redis://127.0.0.1:1/0", "connect_timeout_seconds": 0.1},
    )
    lease = RedisTenantLease.from_settings(settings)
    try:
        with pytest.raises(errors.ProviderUnavailableError, match="Redis is unreachable"):
            await lease.acquire(uuid4(), 1)
    finally:
        await lease.aclose()


# ---------------------------------------------------------------------------------------
# sweeps
# ---------------------------------------------------------------------------------------


async def test_a_sweep_expires_marks_orphans_and_refreshes_the_gauge(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(prefix)
    tenants = [uuid4(), uuid4()]
    async with InMemoryProfileStore() as store:
        for n, tenant in enumerate(tenants):
            await _seed(store, tenant, stale=n + 2)
        lease = _lease(prefix)
        caplog.set_level(logging.INFO, logger="ccvault.worker")
        try:
            reports = await Worker(store, settings, lease).run_once()
        finally:
            await lease.aclose()
        by_tenant = {r.tenant_id: r for r in reports}
        for n, tenant in enumerate(tenants):
            report = by_tenant[tenant]
            assert report.processed
            assert report.expired == n + 2
            assert report.orphaned == 1
            counts = await store.count_items_by_status(tenant)
            assert counts["fields"]["expired"] == n + 2
            assert counts["fields"]["orphaned"] == 1
            for status in ItemStatus:
                gauge = metrics.REGISTRY.get_sample_value(
                    "profile_fields_by_status",
                    {"tenant_id": str(tenant), "status": status.value},
                )
                assert gauge == counts["fields"][status.value]
            assert f"tenant={tenant} processed expired={n + 2} orphaned=1" in caplog.text
        assert "sweep done tenants=2 processed=2" in caplog.text


async def test_auto_expire_disabled_skips_expiry_but_not_the_rest(prefix: str) -> None:
    settings = _settings(prefix, auto_expire_enabled=False)
    tenant = uuid4()
    async with InMemoryProfileStore() as store:
        await _seed(store, tenant, stale=2)
        lease = _lease(prefix)
        try:
            [report] = await Worker(store, settings, lease).run_once()
        finally:
            await lease.aclose()
        assert report.expired == 0 and report.orphaned == 1
        assert (await store.count_items_by_status(tenant))["fields"]["expired"] == 0


async def test_lineage_tracking_disabled_skips_orphan_marking(prefix: str) -> None:
    settings = _settings(prefix, lineage_tracking_enabled=False)
    tenant = uuid4()
    async with InMemoryProfileStore() as store:
        await _seed(store, tenant, stale=1)
        lease = _lease(prefix)
        try:
            [report] = await Worker(store, settings, lease).run_once()
        finally:
            await lease.aclose()
        assert report.expired == 1 and report.orphaned == 0


async def test_concurrent_workers_never_process_a_tenant_twice(prefix: str) -> None:
    settings = _settings(prefix)
    tenants = [uuid4() for _ in range(12)]
    async with InMemoryProfileStore() as store:
        for tenant in tenants:
            await _seed(store, tenant, stale=3)
        leases = [_lease(prefix) for _ in range(4)]
        try:
            workers = [Worker(store, settings, lease) for lease in leases]
            results = await asyncio.gather(*(w.run_once() for w in workers))
        finally:
            for lease in leases:
                await lease.aclose()
        processed = [r.tenant_id for reports in results for r in reports if r.processed]
        assert sorted(processed) == sorted(tenants)  # each exactly once
        assert sum(r.expired for reports in results for r in reports) == 3 * len(tenants)


async def test_a_second_sweep_by_the_same_worker_is_not_blocked_by_its_own_claim(
    prefix: str,
) -> None:
    settings = _settings(prefix)
    tenant = uuid4()
    async with InMemoryProfileStore() as store:
        await _seed(store, tenant, stale=1)
        lease, other = _lease(prefix), _lease(prefix)
        try:
            job = Worker(store, settings, lease)
            assert (await job.run_once())[0].processed
            assert not (await Worker(store, settings, other).run_once())[0].processed
            again = await job.run_once()
            assert again[0].processed and again[0].expired == 0
        finally:
            await lease.aclose()
            await other.aclose()


class _GatedStore(InMemoryProfileStore):
    """Holds ``expire_stale_fields`` of the first tenant until released, to stop mid-tenant."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.orphan_calls: list[UUID] = []

    async def _expire_stale_fields_batch(self, tenant_id, profile_id, now, limit):  # type: ignore[no-untyped-def]
        self.entered.set()
        await self.release.wait()
        return await super()._expire_stale_fields_batch(tenant_id, profile_id, now, limit)

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        self.orphan_calls.append(tenant_id)
        return await super()._mark_orphans_page(tenant_id, now, limit, after)


async def test_stop_request_finishes_the_tenant_in_progress_then_stops(prefix: str) -> None:
    settings = _settings(prefix)
    async with _GatedStore() as store:
        tenants = [uuid4() for _ in range(3)]
        for tenant in tenants:
            await _seed(store, tenant, stale=1)
        lease = _lease(prefix)
        try:
            job = Worker(store, settings, lease)
            running = asyncio.create_task(job.run())
            await asyncio.wait_for(store.entered.wait(), timeout=10)
            job.request_stop()
            store.release.set()
            await asyncio.wait_for(running, timeout=10)
        finally:
            await lease.aclose()
        first = sorted(tenants)[0]
        # the tenant in progress was completed (orphans marked after expiry), no other begun
        assert store.orphan_calls == [first]
        assert (await store.count_items_by_status(first))["fields"]["expired"] == 1
        for tenant in sorted(tenants)[1:]:
            assert (await store.count_items_by_status(tenant))["fields"]["expired"] == 0


async def test_file_lease_is_exclusive_reentrant_lapses_and_works_across_processes(
    tmp_path: Path,
) -> None:
    a, b = FileTenantLease(tmp_path), FileTenantLease(tmp_path)
    tenant = uuid4()
    token = await a.acquire(tenant, 30)
    assert token is not None
    assert await b.acquire(tenant, 30) is None
    assert await a.acquire(tenant, 30) == token
    assert not await b.renew(tenant, b.token, 30)
    # another process cannot take it either
    script = (
        "import asyncio, sys, uuid\n"
        "from ccvault.worker import FileTenantLease\n"
        "lease = FileTenantLease(sys.argv[1])\n"
        "print(asyncio.run(lease.acquire(uuid.UUID(sys.argv[2]), 30)) is not None)\n"
    )
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(tmp_path), str(tenant), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(probe.communicate(), timeout=60)
    assert out.decode().strip() == "False"
    assert await a.renew(tenant, token, 0.05)
    deadline = asyncio.get_running_loop().time() + 5
    while await b.acquire(tenant, 30) is None:
        assert asyncio.get_running_loop().time() < deadline, "the claim never lapsed"
        await asyncio.sleep(0.01)


async def test_concurrent_workers_with_file_leases_never_process_a_tenant_twice(
    tmp_path: Path, prefix: str
) -> None:
    settings = _settings(prefix)
    tenants = [uuid4() for _ in range(8)]
    async with InMemoryProfileStore() as store:
        for tenant in tenants:
            await _seed(store, tenant, stale=2)
        workers = [Worker(store, settings, FileTenantLease(tmp_path)) for _ in range(3)]
        results = await asyncio.gather(*(w.run_once() for w in workers))
    processed = [r.tenant_id for reports in results for r in reports if r.processed]
    assert sorted(processed) == sorted(tenants)


class _FlakyStore(InMemoryProfileStore):
    """Fails the sweep of one tenant, as a lost database connection would."""

    def __init__(self, broken: UUID) -> None:
        super().__init__()
        self.broken = broken

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        if tenant_id == self.broken:
            raise errors.ProviderUnavailableError("connection lost")
        return await super()._mark_orphans_page(tenant_id, now, limit, after)


async def test_a_failing_tenant_is_logged_and_does_not_stop_the_others(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(prefix)
    tenants = sorted([uuid4(), uuid4(), uuid4()])
    async with _FlakyStore(tenants[1]) as store:
        for tenant in tenants:
            await _seed(store, tenant, stale=1)
        lease = _lease(prefix)
        caplog.set_level(logging.INFO, logger="ccvault.worker")
        try:
            reports = await Worker(store, settings, lease).run_once()
        finally:
            await lease.aclose()
    assert [r.processed for r in reports] == [True, False, True]
    assert reports[1].error == "connection lost"
    assert f"tenant={tenants[1]} failed: connection lost" in caplog.text
    assert "processed=2 failed=1" in caplog.text
