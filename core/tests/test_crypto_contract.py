"""The shared contract suite, unchanged, over EncryptedProfileStore(in-memory).

Run twice: as configured (only names the tenant's definitions mark PII are encrypted) and
with every field encrypted, so every rule of the contract is checked through ciphertext.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ccvault.crypto import EncryptedProfileStore, Keyring, generate_key_entry
from ccvault.store import ProfileStore
from ccvault_contract_tests import ProfileStoreContract
from ccvault_inmemory import InMemoryProfileStore

_KEYRING = Keyring.parse(f"{generate_key_entry('old')},{generate_key_entry('new')}")


class TestEncryptedInMemoryContract(ProfileStoreContract):
    capabilities = InMemoryProfileStore.capabilities
    known_gaps = {}

    @pytest.fixture
    async def store(self) -> AsyncIterator[ProfileStore]:
        async with EncryptedProfileStore(InMemoryProfileStore(), _KEYRING) as store:
            yield store


class TestEverythingEncryptedInMemoryContract(ProfileStoreContract):
    capabilities = InMemoryProfileStore.capabilities
    known_gaps = {}

    @pytest.fixture
    async def store(self) -> AsyncIterator[ProfileStore]:
        inner = InMemoryProfileStore()
        async with EncryptedProfileStore(inner, _KEYRING, encrypt_all=True) as store:
            yield store
