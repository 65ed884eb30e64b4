"""The in-memory reference provider against the whole shared contract suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ccvault.store import ProfileStore
from ccvault_contract_tests import ProfileStoreContract
from ccvault_inmemory import InMemoryProfileStore


class TestInMemoryContract(ProfileStoreContract):
    """Also runs the core-rule tests (``core_rule_tests``): the cheapest class of the repo."""

    provider_name = "inmemory"
    known_gaps = {}

    @pytest.fixture
    async def store(self) -> AsyncIterator[InMemoryProfileStore]:
        async with InMemoryProfileStore() as store:
            yield store

    @pytest.fixture
    async def other_store(self, store: InMemoryProfileStore) -> AsyncIterator[ProfileStore]:
        """A second store object over the same backing state (its data and its lock)."""
        async with InMemoryProfileStore() as other:
            other.share_state_with(store)
            yield other
