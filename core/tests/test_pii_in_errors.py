"""Issue 12: exception messages never carry a customer's channel user id (PII)."""

from __future__ import annotations

from uuid import uuid4

import pytest

from ccvault import errors, load_settings, open_store
from ccvault.models import Channel, ChannelIdentity

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
