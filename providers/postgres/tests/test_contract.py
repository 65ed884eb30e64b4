"""The shared contract suite against the real PostgreSQL server, unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ccvault_contract_tests import ProfileStoreContract
from ccvault_postgres import PostgresProfileStore


class TestPostgresContract(ProfileStoreContract):
    """Each test gets its own store object on one schema shared by the session: the suite
    works in fresh random tenants, so tests never see each other's data, and the schema is
    migrated once instead of per test."""

    provider_name = "postgres"
    core_rule_tests = False  # run by the in-memory provider and the production stack

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
