"""Channel user ids sealed at rest (issue 12, finding 5): the store holds only a
deterministic AES-SIV token, every hook that takes or returns a channel user id goes
through the same transformation, lookups keep working, and rotation re-tokenises."""

from __future__ import annotations

import base64
from uuid import UUID

import pytest

from ccvault import errors
from ccvault.crypto import IDENTITY_PREFIX, EncryptedProfileStore, Keyring
from ccvault.models import Channel, ChannelIdentity
from ccvault_inmemory import InMemoryProfileStore

TENANT = UUID("1de11700-0000-4000-8000-000000000001")
OTHER = UUID("1de11700-0000-4000-8000-000000000002")
PHONE = "+4915112345678"
EMAIL = "ana.identity@example.com"
K1 = "k1:" + base64.b64encode(bytes(range(32))).decode()
K2 = "k2:" + base64.b64encode(bytes(range(32, 64))).decode()


def _wrap(inner: InMemoryProfileStore, spec: str = K1) -> EncryptedProfileStore:
    return EncryptedProfileStore(inner, Keyring.parse(spec))


async def _raw_identities(inner: InMemoryProfileStore, profile_id: UUID) -> list[str]:
    raw = await inner._export_profile(TENANT, profile_id)
    assert raw is not None
    return [i.channel_user_id for i in raw.channel_identities]


async def test_the_store_holds_tokens_and_every_lookup_works() -> None:
    inner = InMemoryProfileStore()
    store = _wrap(inner)
    profile = await store.get_or_create(TENANT, Channel.WHATSAPP, PHONE)
    assert [i.channel_user_id for i in profile.channel_identities] == [PHONE]
    assert await store.link_channel(
        TENANT, profile.id, ChannelIdentity(channel=Channel.EMAIL, channel_user_id=EMAIL)
    )
    stored = await _raw_identities(inner, profile.id)
    assert len(stored) == 2 and all(s.startswith(IDENTITY_PREFIX) for s in stored)
    assert not any(PHONE in s or EMAIL in s for s in stored)
    # the inner store finds nothing by the plaintext; the wrapper finds the profile
    assert await inner.get_by_channel_identity(TENANT, Channel.WHATSAPP, PHONE) is None
    for channel, user in ((Channel.WHATSAPP, PHONE), (Channel.EMAIL, EMAIL)):
        found = await store.get_by_channel_identity(TENANT, channel, user)
        assert found is not None and found.id == profile.id
        assert {i.channel_user_id for i in found.channel_identities} == {PHONE, EMAIL}
    again = await store.get_or_create(TENANT, Channel.WHATSAPP, PHONE)
    assert again.id == profile.id
    # export and subject lookup speak plaintext too
    exported = await store.export_profile(TENANT, profile.id)
    assert {i["channel_user_id"] for i in exported["profile"]["channel_identities"]} == {
        PHONE,
        EMAIL,
    }
    report = await store.find_subject(TENANT, channel=Channel.EMAIL, channel_user_id=EMAIL)
    assert profile.id in report.profile_ids
    # the same id on the same channel of the same tenant: the same token (the index);
    # another tenant: another token
    keyring = Keyring.parse(K1)
    other = await store.get_or_create(OTHER, Channel.WHATSAPP, PHONE)
    raw_other = await inner._export_profile(OTHER, other.id)
    assert raw_other is not None
    assert raw_other.channel_identities[0].channel_user_id not in stored
    with pytest.raises(errors.EncryptionError):
        keyring.open_identity(
            raw_other.channel_identities[0].channel_user_id,
            b"ccvault-cid/v1\0" + TENANT.bytes + b"whatsapp",
        )


async def test_merge_log_and_unmerge_return_plaintext_identities() -> None:
    inner = InMemoryProfileStore()
    store = _wrap(inner)
    source = await store.get_or_create(TENANT, Channel.WHATSAPP, PHONE)
    target = await store.get_or_create(TENANT, Channel.EMAIL, EMAIL)
    assert await store.merge_profiles(TENANT, source.id, target.id)
    merged = await store.get_by_channel_identity(TENANT, Channel.WHATSAPP, PHONE)
    assert merged is not None and merged.id == target.id
    (record,) = await store.get_merge_log(TENANT, target.id)
    assert {m.channel_user_id for m in record.identities} >= {PHONE}
    result = await store.unmerge(TENANT, record.id)
    assert [i.channel_user_id for i in result.restored_identities] == [PHONE]
    back = await store.get_by_channel_identity(TENANT, Channel.WHATSAPP, PHONE)
    assert back is not None and back.id == source.id


async def test_bad_channel_user_ids_are_refused_before_anything_is_written() -> None:
    inner = InMemoryProfileStore()
    store = _wrap(inner)
    too_long = "u" * 200  # valid without encryption (<= 255), too long once sealed
    with pytest.raises(errors.ValidationError) as caught:
        await store.get_or_create(TENANT, Channel.WEB, too_long)
    assert too_long not in str(caught.value) and "too long to be sealed" in str(caught.value)
    with pytest.raises(errors.ValidationError, match="reserved"):
        await store.get_or_create(TENANT, Channel.WEB, IDENTITY_PREFIX + "x")
    assert await inner.list_profile_ids(TENANT) == []


async def test_rotation_finds_old_tokens_and_rotate_keys_retokenises() -> None:
    inner = InMemoryProfileStore()
    old = _wrap(inner, K1)
    profile = await old.get_or_create(TENANT, Channel.WHATSAPP, PHONE)
    # legacy: an identity stored in plaintext before encryption was turned on
    legacy = await inner.get_or_create(TENANT, Channel.EMAIL, EMAIL)
    rotating = _wrap(inner, f"{K1},{K2}")
    found = await rotating.get_by_channel_identity(TENANT, Channel.WHATSAPP, PHONE)
    assert found is not None and found.id == profile.id  # under the older key
    assert (await rotating.get_or_create(TENANT, Channel.WHATSAPP, PHONE)).id == profile.id
    found = await rotating.get_by_channel_identity(TENANT, Channel.EMAIL, EMAIL)
    assert found is not None and found.id == legacy.id  # plaintext
    assert (await rotating.get_or_create(TENANT, Channel.EMAIL, EMAIL)).id == legacy.id
    assert len(await inner.list_profile_ids(TENANT)) == 2  # no duplicate created
    (report,) = await rotating.rotate_keys([TENANT])
    assert report.identities == 2 and report.failures == []
    for pid in (profile.id, legacy.id):
        (token,) = await _raw_identities(inner, pid)
        assert token.startswith(f"{IDENTITY_PREFIX}k2:")
    # the new key alone, without plaintext lookups, finds both
    new = EncryptedProfileStore(inner, Keyring.parse(K2), legacy_identities=False)
    for channel, user, pid in (
        (Channel.WHATSAPP, PHONE, profile.id),
        (Channel.EMAIL, EMAIL, legacy.id),
    ):
        got = await new.get_by_channel_identity(TENANT, channel, user)
        assert got is not None and got.id == pid
    (again,) = await rotating.rotate_keys([TENANT])
    assert again.identities == 0  # idempotent
