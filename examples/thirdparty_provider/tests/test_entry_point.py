"""The provider is found by name through the entry point, as an application would find it."""

from __future__ import annotations

from uuid import uuid4

import ccvault
from acme_vault_store import AcmeProfileStore
from ccvault.models import Channel, ProfileField
from ccvault.registry import installed_providers


def test_acme_is_an_installed_provider() -> None:
    installed = installed_providers()
    assert installed["acme"].distribution == "ccvault-thirdparty-example"


async def test_open_store_builds_acme_from_settings() -> None:
    settings = ccvault.load_settings(
        store_provider="acme",
        cache_enabled=False,
        auto_encrypt_pii=False,
        providers={"acme": {"audit": True}},
    )
    async with ccvault.open_store(settings) as store:
        assert isinstance(store, AcmeProfileStore)
        tenant = uuid4()
        profile = await store.get_or_create(tenant, Channel.WHATSAPP, "+15550001111")
        await store.update_field(tenant, profile.id, ProfileField(name="city", value="Oslo"))
        assert store.audit_log == [(tenant, profile.id, "city")]
