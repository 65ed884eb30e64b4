"""The whole shared contract suite, unchanged, over ``CachedProfileStore`` on real Redis.

Runs over the in-memory provider and over PostgreSQL (a throw-away database on the shared
server; the suite's tests use fresh tenants, so they share one schema). Each store gets its
own key prefix on the shared Redis (127.0.0.1:6379), and its keys are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from ccvault.cache import CachedProfileStore
from ccvault.store import ProfileStore
from ccvault_contract_tests import ProfileStoreContract
from ccvault_inmemory import InMemoryProfileStore
from ccvault_postgres import PostgresProfileStore, PostgresSettings
from ccvault_postgres.testing import (
    admin_dsn,
    create_database,
    drop_database,
    dsn_with_database,
)

REDIS_URL = os.environ.get("CCVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _drop_prefix(client: Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)


async def cached(
    inner: ProfileStore, prefix: str | None = None
) -> AsyncIterator[CachedProfileStore]:
    """``inner`` wrapped in a cache with its own Redis client, on ``prefix`` (default: a
    fresh one); the prefix is dropped after."""
    client = Redis.from_url(REDIS_URL)
    prefix = prefix or f"ccvault-test:{uuid.uuid4().hex}:"
    store = CachedProfileStore(inner, client, key_prefix=prefix)
    try:
        async with store:
            yield store
    finally:
        await _drop_prefix(client, prefix)
        await client.aclose()


class TestCachedInMemoryContract(ProfileStoreContract):
    provider_name = "inmemory"
    core_rule_tests = False  # run by the in-memory provider and the production stack
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    async def store(self) -> AsyncIterator[ProfileStore]:
        async for store in cached(InMemoryProfileStore()):
            yield store

    @pytest.fixture
    async def other_store(self, store: CachedProfileStore) -> AsyncIterator[ProfileStore]:
        """A second cache (own Redis client, SAME key prefix) over a second in-memory store
        sharing the first one's data: what a second application process runs."""
        inner = InMemoryProfileStore()
        assert isinstance(store.inner, InMemoryProfileStore)
        inner.share_state_with(store.inner)
        async for other in cached(inner, store.key_prefix):
            yield other


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    """A throw-away database on the shared PostgreSQL server (fails if it is unreachable)."""
    server = admin_dsn()
    name = asyncio.run(create_database(server))
    try:
        yield dsn_with_database(server, name)
    finally:
        asyncio.run(drop_database(server, name))


class TestCachedPostgresContract(ProfileStoreContract):
    provider_name = "postgres"
    core_rule_tests = False
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    async def store(self, pg_dsn: str) -> AsyncIterator[ProfileStore]:
        # one schema for the module: every suite test works in fresh tenants of its own,
        # and the cache of each test has a fresh key prefix
        inner = PostgresProfileStore(PostgresSettings(dsn=pg_dsn, schema="cache_contract"))
        await inner.migrate()  # the explicit step (idempotent): setup() never migrates
        async for store in cached(inner):
            yield store

    @pytest.fixture
    async def other_store(
        self, store: CachedProfileStore, pg_dsn: str
    ) -> AsyncIterator[ProfileStore]:
        """A second cache (own Redis client, SAME key prefix) over a second PostgreSQL store
        (own pool, same schema): what a second application process runs."""
        inner = PostgresProfileStore(PostgresSettings(dsn=pg_dsn, schema="cache_contract"))
        async for other in cached(inner, store.key_prefix):
            yield other
