"""The in-memory reference provider against the whole shared contract suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ccvault.store import ProfileStore
from ccvault_contract_tests import OPTIONAL_CAPABILITIES, ProfileStoreContract
from ccvault_inmemory import InMemoryProfileStore


class TestInMemoryContract(ProfileStoreContract):
    capabilities = frozenset(OPTIONAL_CAPABILITIES)
    known_gaps = {}

    @pytest.fixture
    async def store(self) -> AsyncIterator[ProfileStore]:
        async with InMemoryProfileStore() as store:
            yield store
