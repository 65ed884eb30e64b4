"""ACME gates its releases on the unchanged ccvault contract suite."""

import pytest

from acme_vault_store import AcmeProfileStore
from ccvault_contract_tests import ProfileStoreContract


class TestAcmeContract(ProfileStoreContract):
    capabilities = frozenset({"large_values", "nul_characters"})
    known_gaps = {}

    @pytest.fixture
    async def store(self):
        async with AcmeProfileStore() as store:
            yield store
