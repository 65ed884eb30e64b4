"""Worker leases without Redis: the PostgreSQL advisory-lock lease (on the real server),
the ``auto`` choice per provider, and a worker that loses its claim mid-tenant."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

import ccvault
from ccvault import errors
from ccvault.models import Channel, ProfileField, utcnow
from ccvault.settings import VaultSettings
from ccvault.worker import (
    FileTenantLease,
    PostgresAdvisoryLease,
    RedisTenantLease,
    Worker,
    lease_from_settings,
)
from ccvault_inmemory import InMemoryProfileStore

DSN = os.environ.get("CCVAULT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def namespace() -> str:
    """Lock keys of this test's own (a vault schema name no other test uses)."""
    return f"t_lease_{uuid4().hex[:12]}"


@pytest.fixture
async def leases(namespace: str) -> AsyncIterator[list[PostgresAdvisoryLease]]:
    made = [PostgresAdvisoryLease(DSN, namespace) for _ in range(3)]
    yield made
    for lease in made:
        await lease.aclose()


def _settings(**profile: object) -> VaultSettings:
    return ccvault.load_settings(auto_encrypt_pii=False, **profile)


# ---------------------------------------------------------------------------------------
# the advisory-lock lease
# ---------------------------------------------------------------------------------------


async def test_pg_lease_is_exclusive_reentrant_and_freed_when_the_holder_closes(
    leases: list[PostgresAdvisoryLease],
) -> None:
    a, b, _ = leases
    tenant, other = uuid4(), uuid4()
    token = await a.acquire(tenant, 30)
    assert token is not None
    assert await b.acquire(tenant, 30) is None
    assert await a.acquire(tenant, 30) == token  # re-entrant
    assert await b.acquire(other, 30) is not None  # per tenant
    assert await a.renew(tenant, token, 30)
    assert not await a.renew(tenant, "not-the-token", 30)
    assert not await b.renew(tenant, b.token, 30)  # b never held it
    await a.aclose()  # the session ends: PostgreSQL releases its locks
    assert await b.acquire(tenant, 30) is not None


async def test_pg_lease_keys_are_namespaced_by_schema(namespace: str) -> None:
    tenant = uuid4()
    one = PostgresAdvisoryLease(DSN, namespace)
    two = PostgresAdvisoryLease(DSN, namespace + "_other")
    try:
        assert one.lock_key(tenant) != two.lock_key(tenant)
        assert await one.acquire(tenant, 30) is not None
        assert await two.acquire(tenant, 30) is not None  # another vault: no collision
    finally:
        await one.aclose()
        await two.aclose()


async def test_pg_lease_claim_lapses_after_its_ttl(leases: list[PostgresAdvisoryLease]) -> None:
    a, b, _ = leases
    done, busy = uuid4(), uuid4()
    assert await a.acquire(done, 0) is not None  # ttl 0: lapses at once
    assert await b.acquire(done, 30) is None  # still locked until a's next call
    assert await a.acquire(busy, 30) is not None  # a's next call unlocks lapsed claims
    assert await b.acquire(done, 30) is not None
    assert await b.acquire(busy, 30) is None


async def test_pg_lease_lost_session_fails_renewal_and_frees_the_tenant(
    leases: list[PostgresAdvisoryLease],
) -> None:
    a, b, _ = leases
    tenant = uuid4()
    token = await a.acquire(tenant, 30)
    assert token is not None
    admin = await asyncpg.connect(DSN)
    try:
        await admin.fetchval("SELECT pg_terminate_backend($1)", a._conn.get_server_pid())
    finally:
        await admin.close()
    assert not await a.renew(tenant, token, 30)
    assert await b.acquire(tenant, 30) is not None
    # a reconnects for its next claim, and cannot take b's
    assert await a.acquire(tenant, 30) is None
    assert await a.acquire(uuid4(), 30) is not None


async def test_pg_lease_unreachable_server_is_a_clear_error() -> None:
    lease = PostgresAdvisoryLease(
        "postgresql://postgres@127.0.0.1:1/postgres", connect_timeout_seconds=1
    )
    try:
        with pytest.raises(errors.ProviderUnavailableError, match="PostgreSQL is unreachable"):
            await lease.acquire(uuid4(), 30)
    finally:
        await lease.aclose()


async def test_workers_with_pg_leases_never_process_a_tenant_twice(
    leases: list[PostgresAdvisoryLease],
) -> None:
    settings = _settings(store_provider="inmemory", cache_enabled=False)
    tenants = [uuid4() for _ in range(9)]
    past = utcnow() - timedelta(seconds=5)
    async with InMemoryProfileStore() as store:
        for tenant in tenants:
            pid = (await store.get_or_create(tenant, Channel.WEB, "u")).id
            await store.update_field(
                tenant, pid, ProfileField(name="old", value=1, expires_at=past)
            )
        workers = [Worker(store, settings, lease) for lease in leases]
        results = await asyncio.gather(*(w.run_once() for w in workers))
    processed = [r.tenant_id for reports in results for r in reports if r.processed]
    assert sorted(processed) == sorted(tenants)  # each exactly once
    assert sum(r.expired for reports in results for r in reports) == len(tenants)


# ---------------------------------------------------------------------------------------
# the auto choice
# ---------------------------------------------------------------------------------------


def test_auto_lease_never_picks_per_host_files_for_a_shared_database(tmp_path: str) -> None:
    def lease(provider: str, cache: bool, **worker: object) -> object:
        return lease_from_settings(
            _settings(
                store_provider=provider,
                cache_enabled=cache,
                providers={"postgres": {"dsn": DSN, "schema": "vault_a"}},
                worker=worker,
            )
        )

    assert isinstance(lease("postgres", True), RedisTenantLease)
    chosen = lease("postgres", False)
    assert isinstance(chosen, PostgresAdvisoryLease)
    assert chosen.dsn == DSN and chosen.namespace == "vault_a"
    assert isinstance(lease("sqlite", False), FileTenantLease)
    assert isinstance(lease("inmemory", False), FileTenantLease)
    with pytest.raises(errors.ConfigurationError, match="Redis"):
        lease("mongo", False)
    # an explicit choice is the operator's
    assert isinstance(lease("mongo", False, lease="file"), FileTenantLease)
    assert isinstance(lease("postgres", False, lease="redis"), RedisTenantLease)


def test_pg_lease_refuses_a_dsn_that_is_not_postgresql() -> None:
    settings = _settings(
        store_provider="postgres", cache_enabled=False, providers={"postgres": {"dsn": ""}}
    )
    with pytest.raises(errors.ConfigurationError, match=r"providers\.postgres\.dsn"):
        lease_from_settings(settings)


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

    async def _expire_stale_fields(self, tenant_id, profile_id, now):  # type: ignore[no-untyped-def]
        await asyncio.wait_for(self.lease.renewal_failed.wait(), timeout=10)
        return await super()._expire_stale_fields(tenant_id, profile_id, now)

    async def _mark_orphans(self, tenant_id: UUID) -> int:
        self.orphan_calls += 1
        return await super()._mark_orphans(tenant_id)


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
