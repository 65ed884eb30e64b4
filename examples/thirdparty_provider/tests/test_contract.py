"""ACME gates its releases on the unchanged ccvault contract suite."""

import pytest

from acme_vault_store import AcmeProfileStore
from ccvault_contract_tests import ProfileStoreContract


class TestAcmeContract(ProfileStoreContract):
    provider_name = "acme"  # capabilities come from the acme ProviderSpec
    known_gaps = {}

    @pytest.fixture
    async def store(self):
        async with AcmeProfileStore() as store:
            yield store

    @pytest.fixture
    async def other_store(self, store):
        # a second instance over the same data, as a second ACME process would open it
        async with AcmeProfileStore() as other:
            other.share_state_with(store)
            yield other
