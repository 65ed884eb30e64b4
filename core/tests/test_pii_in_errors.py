"""Issue 12: exception messages never carry a customer's channel user id (PII), and the
records and request bodies that hold one keep it out of their repr."""

from __future__ import annotations

import base64
from uuid import uuid4

import pytest

from ccvault import errors, load_settings, open_store
from ccvault.crypto import IDENTITY_PREFIX, Keyring
from ccvault.models import Channel, ChannelIdentity, ProfileField
from ccvault.rules.merge import HeldIdentity, IdentityPlacement
from ccvault.rules.save import SaveState
from ccvault.rules.unmerge import IdentityUpdate
from ccvault.server.schemas import (
    IdentityLookup,
    LineageStep,
    PayloadRewrite,
    SubjectProfilesRequest,
    SubjectRequest,
)
from ccvault_contract_tests import assert_not_quoted
from ccvault_inmemory import InMemoryProfileStore
from ccvault_inmemory.tables import Tenant

EMAIL = "ana.lopez@example.com"


@pytest.mark.parametrize("provider", ["inmemory", "sqlite"])
async def test_identity_conflict_does_not_name_the_identity(provider: str) -> None:
    settings = load_settings(
        store_provider=provider,
        cache_enabled=False,
        auto_encrypt_pii=False,
        providers={"sqlite": {"path": ":memory:"}},
    )
    tenant = uuid4()
    async with open_store(settings) as store:
        owner = await store.get_or_create(tenant, Channel.EMAIL, EMAIL)
        other = await store.get_or_create(tenant, Channel.WEB, "visitor-2")
        with pytest.raises(errors.IdentityConflictError) as raised:
            await store.link_channel(
                tenant, other.id, ChannelIdentity(channel=Channel.EMAIL, channel_user_id=EMAIL)
            )
        assert "ana.lopez" not in str(raised.value)
        assert "email identity" in str(raised.value)
        assert owner.id != other.id


async def test_a_profile_refused_on_save_names_neither_its_keys_nor_its_values() -> None:
    async with InMemoryProfileStore() as store:
        tenant = uuid4()
        profile = await store.get_or_create(tenant, Channel.WEB, "visitor-1")
        # a dict edited in place is not validated: the key is the caller's, anything at all
        profile.fields[EMAIL] = ProfileField(name="email", value="x")
        with pytest.raises(errors.ValidationError) as raised:
            await store.save(profile)
        assert "field 'email' under another key" in str(raised.value)
        # and pydantic's error, whose text quotes the input, is not chained to it
        assert_not_quoted(raised.value, "ana.lopez")


async def test_an_identity_listed_twice_is_named_by_its_channel() -> None:
    async with InMemoryProfileStore() as store:
        tenant = uuid4()
        profile = await store.get_or_create(tenant, Channel.EMAIL, EMAIL)
        profile.channel_identities.append(
            ChannelIdentity(channel=Channel.EMAIL, channel_user_id=EMAIL)
        )
        with pytest.raises(errors.ValidationError, match="email identity is listed twice") as e:
            await store.save(profile)
        assert_not_quoted(e.value, "ana.lopez")


def test_a_malformed_sealed_identity_is_not_quoted() -> None:
    # no key id and colon after the prefix: the "key id" is the stored text itself
    keyring = Keyring.parse("k1:" + base64.b64encode(bytes(range(32))).decode())
    with pytest.raises(errors.EncryptionError, match=r"key id \(malformed\)") as raised:
        keyring.open_identity(IDENTITY_PREFIX + EMAIL, b"aad")
    assert "ana.lopez" not in str(raised.value)
    with pytest.raises(errors.EncryptionError, match="key id 'k9'"):
        keyring.open_identity(IDENTITY_PREFIX + "k9:AAAA", b"aad")


def test_rule_records_and_request_bodies_keep_identities_out_of_their_repr() -> None:
    tenant, profile_id = uuid4(), uuid4()
    shown = [
        SaveState(exists=True, identity_owners={(Channel.EMAIL, EMAIL): profile_id}),
        HeldIdentity(Channel.EMAIL, EMAIL, primary=True),
        IdentityPlacement(Channel.EMAIL, EMAIL, True, from_source=True, changed=False),
        IdentityUpdate(Channel.EMAIL, EMAIL, profile_id, True, to_source=False),
        IdentityLookup(channel=Channel.EMAIL, channel_user_id=EMAIL),
        SubjectRequest(channel=Channel.EMAIL, channel_user_id=EMAIL),
        SubjectProfilesRequest(channel=Channel.EMAIL, channel_user_id=EMAIL),
        PayloadRewrite(field_id=uuid4(), value=EMAIL, source_metadata={"quote": EMAIL}),
        LineageStep(id=uuid4(), type="profile_field", name="e", source_metadata={"q": EMAIL}),
    ]
    tables = Tenant()
    tables.identities[(Channel.EMAIL, EMAIL)] = profile_id
    shown.append(tables)
    for item in shown:
        assert "ana.lopez" not in repr(item), repr(item)
    assert tenant != profile_id
