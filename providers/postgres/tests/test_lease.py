"""The worker's PostgreSQL lease (tenant claims as rows of ``ccvault_worker_claims``, on the
real server), and how the worker reaches it: through the ``ccvault_worker_lease`` hook of this
provider's plugin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

import ccvault
from ccvault import errors
from ccvault.models import Channel, ProfileField, utcnow
from ccvault.settings import VaultSettings
from ccvault.worker import RedisTenantLease, Worker, lease_from_settings
from ccvault_inmemory import InMemoryProfileStore
from ccvault_postgres.lease import PostgresAdvisoryLease, PostgresTenantLease
from ccvault_postgres.testing import admin_dsn

from .conftest import StoreFactory

DSN = admin_dsn()


@pytest.fixture
async def namespace(make_store: StoreFactory) -> str:
    """A migrated vault schema of this test's own (it holds ccvault_worker_claims)."""
    store = await make_store()
    return store.settings.db_schema


@pytest.fixture
async def leases(namespace: str, pg_dsn: str) -> AsyncIterator[list[PostgresTenantLease]]:
    made = [PostgresTenantLease(pg_dsn, namespace) for _ in range(3)]
    yield made
    for lease in made:
        await lease.aclose()


def _settings(**profile: object) -> VaultSettings:
    return ccvault.load_settings(auto_encrypt_pii=False, **profile)


async def test_pg_lease_is_exclusive_reentrant_and_outlives_its_holder(
    leases: list[PostgresTenantLease],
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
    await a.aclose()  # the holder is gone: its claim stays until it lapses
    assert await b.acquire(tenant, 30) is None


async def test_pg_lease_claims_are_per_vault_schema(make_store: StoreFactory, pg_dsn: str) -> None:
    tenant = uuid4()
    first, second = await make_store(), await make_store()
    one = PostgresTenantLease(pg_dsn, first.settings.db_schema)
    two = PostgresTenantLease(pg_dsn, second.settings.db_schema)
    try:
        assert await one.acquire(tenant, 30) is not None
        assert await two.acquire(tenant, 30) is not None  # another vault: no collision
    finally:
        await one.aclose()
        await two.aclose()


async def test_pg_lease_claim_lapses_after_its_ttl(leases: list[PostgresTenantLease]) -> None:
    a, b, _ = leases
    done, busy = uuid4(), uuid4()
    assert await a.acquire(done, 0) is not None  # ttl 0: lapses at once
    assert await b.acquire(done, 30) is not None  # on the database's clock
    assert await a.acquire(busy, 30) is not None
    assert await b.acquire(busy, 30) is None
    assert not await a.renew(done, a.token, 30)  # taken over: a's renewal fails


async def test_pg_lease_survives_a_lost_session(leases: list[PostgresTenantLease]) -> None:
    a, b, _ = leases
    tenant = uuid4()
    token = await a.acquire(tenant, 30)
    assert token is not None
    admin = await asyncpg.connect(DSN)
    try:
        await admin.fetchval("SELECT pg_terminate_backend($1)", a._conn.get_server_pid())
    finally:
        await admin.close()
    # the claim is a row, not a session lock: nobody else may take it meanwhile
    assert await b.acquire(tenant, 30) is None
    assert await a.renew(tenant, token, 30)  # reconnects and still holds it


async def test_pg_lease_without_its_table_asks_for_migrate(pg_dsn: str) -> None:
    lease = PostgresTenantLease(pg_dsn, f"t_unmigrated_{uuid4().hex[:12]}")
    try:
        with pytest.raises(errors.SchemaNotReadyError, match="ccvault migrate"):
            await lease.acquire(uuid4(), 30)
    finally:
        await lease.aclose()


async def test_pg_lease_unreachable_server_is_a_clear_error() -> None:
    lease = PostgresTenantLease(
        "postgresql://postgres@127.0.0.1:1/postgres", connect_timeout_seconds=1
    )
    try:
        with pytest.raises(errors.ProviderUnavailableError, match="PostgreSQL is unreachable"):
            await lease.acquire(uuid4(), 30)
    finally:
        await lease.aclose()


async def test_workers_with_pg_leases_never_process_a_tenant_twice(
    leases: list[PostgresTenantLease],
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


async def test_two_workers_once_over_one_database_sweep_each_tenant_exactly_once(
    make_store: StoreFactory, pg_dsn: str
) -> None:
    """Two ``worker --once`` runs, as two processes would: each its own pool and its own
    lease, started together over 12 tenants; then a third run started after both ended
    (the case that swept tenants twice with session-level advisory locks: they were
    released when the first process exited)."""
    first = await make_store()
    schema = first.settings.db_schema
    second = await make_store(schema=schema, migrate=False)
    settings = _settings(
        store_provider="postgres",
        cache_enabled=False,
        expire_check_interval_seconds=600,
        providers={"postgres": {"dsn": pg_dsn, "schema": schema}},
    )
    tenants = [uuid4() for _ in range(12)]
    past = utcnow() - timedelta(seconds=5)
    for number, tenant in enumerate(tenants):
        pid = (await first.get_or_create(tenant, Channel.WEB, f"user-{number}")).id
        await first.update_field(tenant, pid, ProfileField(name="old", value=1, expires_at=past))
    runs = [lease_from_settings(settings) for _ in range(3)]
    assert all(isinstance(lease, PostgresTenantLease) for lease in runs)
    try:
        together = await asyncio.gather(
            Worker(first, settings, runs[0]).run_once(),
            Worker(second, settings, runs[1]).run_once(),
        )
        sweeps: dict[UUID, int] = {}
        for reports in together:
            for report in reports:
                if report.processed:
                    sweeps[report.tenant_id] = sweeps.get(report.tenant_id, 0) + 1
        assert sweeps == dict.fromkeys(tenants, 1)  # every tenant, each exactly once
        assert sum(r.expired for reports in together for r in reports) == len(tenants)
        await runs[0].aclose()
        await runs[1].aclose()  # both "processes" are gone
        later = await Worker(first, settings, runs[2]).run_once()
        assert [r.tenant_id for r in later if r.processed] == []  # same interval: none again
        assert sorted(r.tenant_id for r in later) == sorted(tenants)
    finally:
        for lease in runs:
            await lease.aclose()


# ---------------------------------------------------------------------------------------
# reached through the hook
# ---------------------------------------------------------------------------------------


def test_auto_lease_on_postgres_without_the_cache_is_the_advisory_lock_lease() -> None:
    def lease(cache: bool, **worker: object) -> object:
        return lease_from_settings(
            _settings(
                store_provider="postgres",
                cache_enabled=cache,
                providers={"postgres": {"dsn": DSN, "schema": "vault_a"}},
                worker=worker,
            )
        )

    assert isinstance(lease(True), RedisTenantLease)
    chosen = lease(False)
    assert isinstance(chosen, PostgresAdvisoryLease)
    assert chosen.dsn == DSN and chosen.namespace == "vault_a"
    # an explicit choice is the operator's
    assert isinstance(lease(False, lease="redis"), RedisTenantLease)
    assert isinstance(lease(True, lease="postgres"), PostgresAdvisoryLease)


def test_the_postgres_lease_serves_a_vault_on_another_provider_when_named() -> None:
    settings = _settings(
        store_provider="inmemory",
        cache_enabled=False,
        providers={"postgres": {"dsn": DSN, "schema": "vault_b"}},
        worker={"lease": "postgres"},
    )
    chosen = lease_from_settings(settings)
    assert isinstance(chosen, PostgresAdvisoryLease) and chosen.namespace == "vault_b"


def test_pg_lease_refuses_a_dsn_that_is_not_postgresql() -> None:
    settings = _settings(
        store_provider="postgres", cache_enabled=False, providers={"postgres": {"dsn": ""}}
    )
    with pytest.raises(errors.ConfigurationError, match=r"providers\.postgres\.dsn"):
        lease_from_settings(settings)
