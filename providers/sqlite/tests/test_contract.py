"""The shared contract suite against the SQLite store: on a file and in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ccvault_contract_tests import ProfileStoreContract
from ccvault_sqlite import SqliteProfileStore


class TestSqliteFileContract(ProfileStoreContract):
    provider_name = "sqlite"
    known_gaps = {}
    core_rule_tests = False  # run by the in-memory provider and the production stack

    @pytest.fixture
    async def store(self, db: Path) -> AsyncIterator[SqliteProfileStore]:
        """A store on a new file, migrated first (the explicit ``ccvault migrate`` step)."""
        async with SqliteProfileStore(path=db) as s:
            yield s

    @pytest.fixture
    async def other_store(
        self, store: SqliteProfileStore, db: Path
    ) -> AsyncIterator[SqliteProfileStore]:
        """A second store with its own connection on the same file (as a second process)."""
        async with SqliteProfileStore(path=db) as s:
            yield s


class TestSqliteMemoryContract(ProfileStoreContract):
    """``path = ":memory:"``: a private database per store, which no second instance can
    open, so this class runs single-instance; the file class above runs the cross-instance
    tests over the same code."""

    provider_name = "sqlite"
    known_gaps = {}
    core_rule_tests = False
    single_instance = "a ':memory:' database is private to the connection that created it"

    @pytest.fixture
    async def store(self) -> AsyncIterator[SqliteProfileStore]:
        async with SqliteProfileStore(path=":memory:") as s:
            yield s
