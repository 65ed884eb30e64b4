"""The shared contract suite against the real PostgreSQL server, unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar

import pytest

from ccvault_contract_tests import ProfileStoreContract
from ccvault_contract_tests.capabilities import HIGH_CONCURRENCY, LARGE_VALUES
from ccvault_postgres import PostgresProfileStore


class TestPostgresContract(ProfileStoreContract):
    """Each test gets its own store object on one schema shared by the session: the suite
    works in fresh random tenants, so tests never see each other's data, and the schema is
    migrated once instead of per test."""

    capabilities: ClassVar[frozenset[str]] = frozenset({LARGE_VALUES, HIGH_CONCURRENCY})

    @pytest.fixture
    async def store(
        self, make_store: Callable[..., Awaitable[PostgresProfileStore]]
    ) -> AsyncIterator[PostgresProfileStore]:
        yield await make_store(schema="contract")

    @pytest.fixture
    async def other_store(
        self,
        store: PostgresProfileStore,
        make_store: Callable[..., Awaitable[PostgresProfileStore]],
    ) -> AsyncIterator[PostgresProfileStore]:
        """A second store with its own pool on the same database and schema."""
        yield await make_store(schema="contract")
