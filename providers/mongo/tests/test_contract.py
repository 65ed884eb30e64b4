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

from .conftest import open_mongo_store

CAPABILITIES = MongoProfileStore.capabilities


class TestMongoStandaloneContract(ProfileStoreContract):
    """Ordered single-document writes (transactions = "off")."""

    capabilities = CAPABILITIES

    @pytest.fixture
    async def store(self) -> AsyncIterator[MongoProfileStore]:
        async for store in open_mongo_store(transactions="off"):
            assert store.transactions_enabled is False
            yield store


class TestMongoTransactionsContract(ProfileStoreContract):
    """Multi-document transactions (transactions = "on")."""

    capabilities = CAPABILITIES

    @pytest.fixture
    async def store(self) -> AsyncIterator[MongoProfileStore]:
        try:
            async for store in open_mongo_store(transactions="on"):
                assert store.transactions_enabled is True
                yield store
        except errors.ConfigurationError as exc:
            pytest.skip(f"the MongoDB server has no transactions: {exc}")
