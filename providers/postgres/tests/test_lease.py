"""The worker's PostgreSQL advisory-lock lease (on the real server), and how the worker
reaches it: through the ``ccvault_worker_lease`` hook of this provider's plugin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import uuid4

import asyncpg
import pytest

import ccvault
from ccvault import errors
from ccvault.models import Channel, ProfileField, utcnow
from ccvault.settings import VaultSettings
from ccvault.worker import RedisTenantLease, Worker, lease_from_settings
from ccvault_inmemory import InMemoryProfileStore
from ccvault_postgres.lease import PostgresAdvisoryLease
from ccvault_postgres.testing import admin_dsn

DSN = admin_dsn()


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
