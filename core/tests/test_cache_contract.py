"""The whole shared contract suite, unchanged, over ``CachedProfileStore`` on real Redis.

Runs over the in-memory provider and, when the PostgreSQL provider is installed and its
server reachable, over PostgreSQL. Each store gets its own key prefix on the shared Redis
(127.0.0.1:6379), and its keys are deleted afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ccvault.cache import CachedProfileStore
from ccvault.store import ProfileStore
from ccvault_contract_tests import ProfileStoreContract
from ccvault_inmemory import InMemoryProfileStore
from redis.asyncio import Redis

REDIS_URL = os.environ.get("CCVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _drop_prefix(client: Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)


async def cached(inner: ProfileStore) -> AsyncIterator[CachedProfileStore]:
    """``inner`` wrapped in a cache with a fresh key prefix; the prefix is dropped after."""
    client = Redis.from_url(REDIS_URL)
    prefix = f"ccvault-test:{uuid.uuid4().hex}:"
    store = CachedProfileStore(inner, client, key_prefix=prefix)
    try:
        async with store:
            yield store
    finally:
        await _drop_prefix(client, prefix)
        await client.aclose()


class TestCachedInMemoryContract(ProfileStoreContract):
    capabilities = InMemoryProfileStore.capabilities
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    async def store(self) -> AsyncIterator[ProfileStore]:
        async for store in cached(InMemoryProfileStore()):
            yield store


def _postgres_store() -> Any:
    """A fresh PostgreSQL store, as the provider's own tests build one, or None."""
    if importlib.util.find_spec("ccvault_postgres") is None:
        return None
    try:
        from ccvault_postgres.testing import fresh_store  # type: ignore[import-not-found]
    except ImportError:
        return None
    return fresh_store


_fresh_postgres = _postgres_store()


@pytest.mark.skipif(_fresh_postgres is None, reason="ccvault-postgres test helper not available")
class TestCachedPostgresContract(ProfileStoreContract):
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    async def store(self) -> AsyncIterator[ProfileStore]:
        async with _fresh_postgres() as inner:
            async for store in cached(inner):
                yield store
