"""The shared contract suite, unchanged, against the MongoDB provider.

It runs twice: once without transactions (a standalone server: the ordered
single-document writes) and once with them (a replica set). Against the emulation the
second run uses its lock-and-snapshot transactions; against a real server
(``CCVAULT_TEST_MONGO_URL``) it needs a replica set and is skipped on a standalone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ccvault import errors
from ccvault_contract_tests import ProfileStoreContract
from ccvault_mongo import MongoProfileStore

from .conftest import open_mongo_store, open_second_mongo_store


class TestMongoStandaloneContract(ProfileStoreContract):
    """Ordered single-document writes (transactions = "off")."""

    provider_name = "mongo"
    core_rule_tests = False  # run by the in-memory provider and the production stack

    @pytest.fixture
    async def store(self) -> AsyncIterator[MongoProfileStore]:
        async for store in open_mongo_store(transactions="off"):
            assert store.transactions_enabled is False
            yield store

    @pytest.fixture
    async def other_store(self, store: MongoProfileStore) -> AsyncIterator[MongoProfileStore]:
        async for other in open_second_mongo_store(store):
            yield other


class TestMongoTransactionsContract(ProfileStoreContract):
    """Multi-document transactions (transactions = "on")."""

    provider_name = "mongo"
    core_rule_tests = False

    @pytest.fixture
    async def store(self) -> AsyncIterator[MongoProfileStore]:
        try:
            async for store in open_mongo_store(transactions="on"):
                assert store.transactions_enabled is True
                yield store
        except errors.ConfigurationError as exc:
            pytest.skip(f"the MongoDB server has no transactions: {exc}")

    @pytest.fixture
    async def other_store(self, store: MongoProfileStore) -> AsyncIterator[MongoProfileStore]:
        async for other in open_second_mongo_store(store):
            yield other
