"""The shared contract suite against the real PostgreSQL server, unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from ccvault_contract_tests import ProfileStoreContract
from ccvault_contract_tests.capabilities import HIGH_CONCURRENCY, LARGE_VALUES
from ccvault_postgres import PostgresProfileStore


class TestPostgresContract(ProfileStoreContract):
    """Each test gets a set-up store in a schema of its own (see conftest.py)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({LARGE_VALUES, HIGH_CONCURRENCY})

    @pytest.fixture
    async def store(self, make_store) -> AsyncIterator[PostgresProfileStore]:  # type: ignore[no-untyped-def, override]
        yield await make_store()
