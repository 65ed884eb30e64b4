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


async def _second(store: EncryptedProfileStore) -> AsyncIterator[ProfileStore]:
    """A second encrypted store over a second in-memory store sharing the first one's data
    (what a second process of the deployment runs)."""
    inner = InMemoryProfileStore()
    assert isinstance(store.inner, InMemoryProfileStore)
    inner.share_state_with(store.inner)
    async with EncryptedProfileStore(inner, _KEYRING, encrypt_all=store.encrypt_all) as other:
        yield other


class TestEncryptedInMemoryContract(ProfileStoreContract):
    provider_name = "inmemory"
    core_rule_tests = False  # run by the in-memory provider and the production stack
    known_gaps = {}

    @pytest.fixture
    async def store(self) -> AsyncIterator[ProfileStore]:
        async with EncryptedProfileStore(InMemoryProfileStore(), _KEYRING) as store:
            yield store

    @pytest.fixture
    async def other_store(self, store: EncryptedProfileStore) -> AsyncIterator[ProfileStore]:
        async for other in _second(store):
            yield other


class TestEverythingEncryptedInMemoryContract(ProfileStoreContract):
    provider_name = "inmemory"
    core_rule_tests = False
    known_gaps = {}

    @pytest.fixture
    async def store(self) -> AsyncIterator[ProfileStore]:
        inner = InMemoryProfileStore()
        async with EncryptedProfileStore(inner, _KEYRING, encrypt_all=True) as store:
            yield store

    @pytest.fixture
    async def other_store(self, store: EncryptedProfileStore) -> AsyncIterator[ProfileStore]:
        async for other in _second(store):
            yield other
