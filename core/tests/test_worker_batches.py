"""The worker's sweeps run the bulk jobs in batches of ``[worker] batch_size``: counted in
metrics and the tenant report, and stopped between two batches once the claim is lost."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from uuid import UUID, uuid4

import pytest

import ccvault
from ccvault import metrics
from ccvault.models import Channel, ItemStatus, ProfileField, utcnow
from ccvault.settings import VaultSettings
from ccvault.store import ProfileStore
from ccvault.worker import Worker
from ccvault_inmemory import InMemoryProfileStore


def _settings(batch_size: int) -> VaultSettings:
    return ccvault.load_settings(
        store_provider="inmemory",
        cache_enabled=False,
        auto_encrypt_pii=False,
        expire_check_interval_seconds=1,
        worker={"batch_size": batch_size},
    )


class _GrantingLease:
    """Grants every claim; renewals succeed until ``lose()`` (then the claim is gone)."""

    def __init__(self) -> None:
        self.lost = False
        self.renewal_failed = asyncio.Event()

    def lose(self) -> None:
        self.lost = True

    async def acquire(self, tenant_id: UUID, ttl_seconds: float) -> str | None:
        return "token"

    async def renew(self, tenant_id: UUID, token: str, ttl_seconds: float) -> bool:
        if self.lost:
            self.renewal_failed.set()
            return False
        return True

    async def aclose(self) -> None:
        return None


class _RecordingStore(InMemoryProfileStore):
    """Records the limit of every expire batch; from batch ``hold_from`` on, a batch runs
    only once the lease's renewal has failed (the claim was lost during the job)."""

    def __init__(self, lease: _GrantingLease | None = None, hold_from: int | None = None) -> None:
        super().__init__()
        self.lease = lease
        self.hold_from = hold_from
        self.limits: list[int] = []

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        self.limits.append(limit)
        if self.lease is not None and self.hold_from == len(self.limits):
            self.lease.lose()
            await asyncio.wait_for(self.lease.renewal_failed.wait(), timeout=30)
        return await super()._expire_stale_fields_batch(tenant_id, profile_id, now, limit)


async def _stale_profiles(store: ProfileStore, tenant: UUID, count: int) -> None:
    """``count`` profiles, one stale field each (a second stale field written to the same
    profile would expire the first at once)."""
    past = utcnow() - timedelta(seconds=5)
    for number in range(count):
        profile = await store.get_or_create(tenant, Channel.WEB, f"user-{number}-{uuid4().hex}")
        await store.update_field(
            tenant, profile.id, ProfileField(name="otp", value=number, expires_at=past)
        )


def _sample(name: str, job: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, {"job": job})
    return value or 0.0


async def test_a_sweep_expires_in_batches_of_the_configured_size() -> None:
    async with _RecordingStore() as store:
        tenant = uuid4()
        await _stale_profiles(store, tenant, 7)
        batches_before = _sample("ccvault_worker_batches_total", "expire")
        rows_before = _sample("ccvault_worker_batch_rows_total", "expire")
        [report] = await Worker(
            store, _settings(3), _GrantingLease(), tenant_ids=[tenant]
        ).run_once()
        assert report.processed and report.error is None
        assert report.expired == 7
        assert store.limits == [3, 3, 3]  # batches of 3, 3 and 1 row(s)
        assert _sample("ccvault_worker_batches_total", "expire") - batches_before == 3
        assert _sample("ccvault_worker_batch_rows_total", "expire") - rows_before == 7
        counted = await store.count_items_by_status(tenant)
        assert counted["fields"]["expired"] == 7 and counted["fields"]["active"] == 0


async def test_a_claim_lost_during_a_job_stops_it_between_two_batches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lease = _GrantingLease()
    async with _RecordingStore(lease, hold_from=2) as store:
        tenant = uuid4()
        await _stale_profiles(store, tenant, 5)
        [report] = await Worker(store, _settings(2), lease, tenant_ids=[tenant]).run_once()
        # batch 2 ran (it was under way when the claim was lost), batch 3 never started
        assert store.limits == [2, 2]
        assert not report.processed
        assert report.error is not None and "after batch 2" in report.error
        assert report.expired == 4
        counted = await store.count_items_by_status(tenant)
        assert counted["fields"]["expired"] == 4 and counted["fields"]["active"] == 1
        # whoever holds the tenant next finishes it
        assert await store.expire_stale_fields(tenant) == 1
        history = [
            version.status
            for profile_id in await store.list_profile_ids(tenant)
            for version in await store.get_field_history(tenant, profile_id, "otp")
        ]
        assert history == [ItemStatus.EXPIRED] * 5
    assert "claim lost" in caplog.text


class _StoppingStore(InMemoryProfileStore):
    """Asks the worker to stop during the first expire batch."""

    worker: Worker | None = None

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        assert self.worker is not None
        self.worker.request_stop()
        return await super()._expire_stale_fields_batch(tenant_id, profile_id, now, limit)


async def test_a_stop_request_leaves_a_large_tenant_between_two_batches() -> None:
    async with _StoppingStore() as store:
        tenant = uuid4()
        await _stale_profiles(store, tenant, 5)
        worker = Worker(store, _settings(2), _GrantingLease(), tenant_ids=[tenant])
        store.worker = worker
        [report] = await worker.run_once()
        assert not report.processed
        assert report.error is not None and "stop requested" in report.error
        assert report.expired == 2  # batch 1 committed, then the worker left
        counted = await store.count_items_by_status(tenant)
        assert counted["fields"]["expired"] == 2 and counted["fields"]["active"] == 3
