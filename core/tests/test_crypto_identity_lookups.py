"""The stored forms of a looked-up channel user id (AES-SIV tokens, deterministic) are kept
with the opened envelopes (issue 13, encrypted reads): a second lookup seals nothing, and
what is kept never outlives a change of keyring or setting, a bound, or an erasure."""

from __future__ import annotations

import base64
from typing import Any
from uuid import UUID

import pytest

from ccvault.crypto import EncryptedProfileStore, Keyring
from ccvault.models import Channel
from ccvault_inmemory import InMemoryProfileStore

TENANT = UUID("1de11700-0000-4000-8000-00000000000a")
PHONE = "+4915112340000"
K1 = "k1:" + base64.b64encode(bytes(range(64, 96))).decode()
K2 = "k2:" + base64.b64encode(bytes(range(96, 128))).decode()


@pytest.fixture
def seals(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every channel user id Keyring.seal_identity is asked to seal."""
    sealed: list[str] = []
    original = Keyring.seal_identity

    def counting(self: Keyring, user_id: str, aad: bytes, kid: str | None = None) -> str:
        sealed.append(user_id)
        return original(self, user_id, aad, kid)

    monkeypatch.setattr(Keyring, "seal_identity", counting)
    return sealed


async def test_a_second_lookup_seals_nothing(seals: list[str]) -> None:
    store = EncryptedProfileStore(InMemoryProfileStore(), Keyring.parse(K1))
    profile = await store.get_or_create(TENANT, Channel.WHATSAPP, PHONE)
    found = await store.get_by_channel_identity(TENANT, Channel.WHATSAPP, PHONE)
    assert found is not None and found.id == profile.id
    seals.clear()
    for _ in range(3):
        found = await store.get_by_channel_identity(TENANT, Channel.WHATSAPP, PHONE)
        assert found is not None and found.id == profile.id
        assert [i.channel_user_id for i in found.channel_identities] == [PHONE]
    assert seals == []
    # another channel, tenant or id is sealed afresh
    assert await store.get_by_channel_identity(TENANT, Channel.SMS, PHONE) is None
    assert seals == [PHONE]


async def test_a_new_keyring_or_setting_is_never_answered_from_the_kept_tokens() -> None:
    inner = InMemoryProfileStore()
    store = EncryptedProfileStore(inner, Keyring.parse(K1))
    profile = await store.get_or_create(TENANT, Channel.WHATSAPP, PHONE)
    assert await store.get_by_channel_identity(TENANT, Channel.WHATSAPP, PHONE) is not None
    # a key appended (rotation in progress): found under the older key, k2's token first
    store.keyring = Keyring.parse(f"{K1},{K2}")
    found = await store.get_by_channel_identity(TENANT, Channel.WHATSAPP, PHONE)
    assert found is not None and found.id == profile.id
    ((_, _, tokens),) = store._identity_lookups.values()
    assert [t.split(":")[1] for t in tokens[:2]] == ["k2", "k1"] and tokens[2] == PHONE
    # an identity stored in plaintext (before encryption) is found only with the setting on
    legacy = await inner.get_or_create(TENANT, Channel.EMAIL, "legacy@example.com")
    assert await store.get_by_channel_identity(TENANT, Channel.EMAIL, "legacy@example.com")
    store.legacy_identities = False
    assert await store.get_by_channel_identity(TENANT, Channel.EMAIL, "legacy@example.com") is None
    store.legacy_identities = True
    again = await store.get_by_channel_identity(TENANT, Channel.EMAIL, "legacy@example.com")
    assert again is not None and again.id == legacy.id


async def test_kept_tokens_are_bounded_and_dropped_by_erasure() -> None:
    store = EncryptedProfileStore(InMemoryProfileStore(), Keyring.parse(K1), opened_cache_size=2)
    profile = await store.get_or_create(TENANT, Channel.WHATSAPP, PHONE)
    for n in range(5):
        await store.get_by_channel_identity(TENANT, Channel.SMS, f"+49000{n}")
    assert len(store._identity_lookups) == 2
    assert await store.get_by_channel_identity(TENANT, Channel.WHATSAPP, PHONE) is not None
    await store.purge_profile(TENANT, profile.id)
    assert store._identity_lookups == {} and store._opened == {}
    off: Any = EncryptedProfileStore(InMemoryProfileStore(), Keyring.parse(K1), opened_cache_size=0)
    await off.get_by_channel_identity(TENANT, Channel.SMS, PHONE)
    assert off._identity_lookups == {}
