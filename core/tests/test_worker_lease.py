"""Worker leases without Redis: the ``auto`` choice per provider (asked of the provider's
spec and the ``ccvault_worker_lease`` hook: core names no provider), a lease a plugin
contributes, and a worker that loses its claim mid-tenant. The PostgreSQL advisory-lock
lease is tested with its provider (providers/postgres/tests/test_lease.py)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel

import ccvault
from ccvault import errors
from ccvault.batches import KeysetBatch
from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault.models import Channel
from ccvault.registry import register_provider
from ccvault.settings import VaultSettings
from ccvault.store import ProfileStore
from ccvault.store_rules import StoreRules
from ccvault.worker import FileTenantLease, RedisTenantLease, Worker, lease_from_settings
from ccvault_inmemory import InMemoryProfileStore


def _settings(**profile: object) -> VaultSettings:
    return ccvault.load_settings(auto_encrypt_pii=False, **profile)


# ---------------------------------------------------------------------------------------
# the auto choice
# ---------------------------------------------------------------------------------------


def test_auto_lease_never_picks_per_host_files_for_a_shared_database() -> None:
    def lease(provider: str, cache: bool, **worker: object) -> object:
        return lease_from_settings(
            _settings(store_provider=provider, cache_enabled=cache, worker=worker)
        )

    assert isinstance(lease("mongo", True), RedisTenantLease)
    # single-host providers (their spec says so): claim files
    assert isinstance(lease("sqlite", False), FileTenantLease)
    assert isinstance(lease("inmemory", False), FileTenantLease)
    # a shared database without a lease of its own: Redis is required
    with pytest.raises(errors.ConfigurationError, match="Redis"):
        lease("mongo", False)
    # an explicit choice is the operator's
    assert isinstance(lease("mongo", False, lease="file"), FileTenantLease)
    assert isinstance(lease("sqlite", False, lease="redis"), RedisTenantLease)


def test_a_lease_no_plugin_contributes_is_a_clear_configuration_error() -> None:
    with pytest.raises(errors.ConfigurationError, match="no_such_lease"):
        lease_from_settings(_settings(store_provider="inmemory", worker={"lease": "no_such_lease"}))
    with pytest.raises(errors.ConfigurationError, match=r"worker\.lease"):
        _settings(worker={"lease": "Not A Name"})


class _Lease:
    async def acquire(self, tenant_id: UUID, ttl_seconds: float) -> str | None:
        return "t"

    async def renew(self, tenant_id: UUID, token: str, ttl_seconds: float) -> bool:
        return True

    async def aclose(self) -> None:
        return None


class _SharedDbPlugin:
    """A third-party provider over a shared database, with a lease of its own."""

    lease = _Lease()

    @hookimpl
    def ccvault_provider(self) -> ProviderSpec:
        def create(options: BaseModel, rules: StoreRules) -> ProfileStore:
            return InMemoryProfileStore(rules=rules)

        return ProviderSpec(
            name="leasetest_shared",
            distribution="ccvault-leasetest",
            settings_model=BaseModel,
            create_store=create,
        )

    @hookimpl
    def ccvault_worker_lease(self, kind: str, settings: VaultSettings) -> _Lease | None:
        if kind == "leasetest_shared" or (
            kind == "auto" and settings.profile.store_provider == "leasetest_shared"
        ):
            return self.lease
        return None


def test_a_provider_contributes_its_lease_through_the_hook() -> None:
    plugin = _SharedDbPlugin()
    register_provider(plugin)
    auto = lease_from_settings(_settings(store_provider="leasetest_shared", cache_enabled=False))
    assert auto is plugin.lease
    named = lease_from_settings(
        _settings(store_provider="inmemory", worker={"lease": "leasetest_shared"})
    )
    assert named is plugin.lease
    # the cache on: Redis, whatever the provider offers
    cached = lease_from_settings(_settings(store_provider="leasetest_shared", cache_enabled=True))
    assert isinstance(cached, RedisTenantLease)


# ---------------------------------------------------------------------------------------
# a lost claim stops the sweep
# ---------------------------------------------------------------------------------------


class _LosingLease:
    """Grants every claim, then fails every renewal (the claim was taken over)."""

    def __init__(self) -> None:
        self.renewal_failed = asyncio.Event()

    async def acquire(self, tenant_id: UUID, ttl_seconds: float) -> str | None:
        return "token"

    async def renew(self, tenant_id: UUID, token: str, ttl_seconds: float) -> bool:
        self.renewal_failed.set()
        return False

    async def aclose(self) -> None:
        return None


class _SlowExpiryStore(InMemoryProfileStore):
    """``expire_stale_fields`` returns only after the keeper's renewal has failed."""

    def __init__(self, lease: _LosingLease) -> None:
        super().__init__()
        self.lease = lease
        self.orphan_calls = 0

    async def _expire_stale_fields_batch(self, tenant_id, profile_id, now, limit):  # type: ignore[no-untyped-def]
        await asyncio.wait_for(self.lease.renewal_failed.wait(), timeout=10)
        return await super()._expire_stale_fields_batch(tenant_id, profile_id, now, limit)

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        self.orphan_calls += 1
        return await super()._mark_orphans_page(tenant_id, now, limit, after)


async def test_a_worker_that_loses_its_claim_stops_sweeping_the_tenant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = _settings(
        store_provider="inmemory", cache_enabled=False, expire_check_interval_seconds=1
    )
    lease = _LosingLease()
    async with _SlowExpiryStore(lease) as store:
        tenant = uuid4()
        await store.get_or_create(tenant, Channel.WEB, "u")
        [report] = await Worker(store, settings, lease, tenant_ids=[tenant]).run_once()
        assert store.orphan_calls == 0  # no step after the claim was lost
    assert not report.processed
    assert report.error is not None and "claim lost" in report.error
    assert "claim lost" in caplog.text
