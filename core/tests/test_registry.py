"""Provider discovery through entry points, lazy loading, clear errors, open_store."""

from __future__ import annotations

import subprocess
import sys
from uuid import uuid4

import pytest
from pydantic import BaseModel

import ccvault
from ccvault import errors, registry
from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault.models import Channel


def test_builtin_providers_are_found_by_entry_point() -> None:
    installed = registry.installed_providers()
    for name in ("inmemory", "sqlite", "postgres", "mongo"):
        assert name in installed
        # the convention the install hint relies on: provider NAME ships as ccvault-NAME
        assert installed[name].distribution == f"{registry.DISTRIBUTION_PREFIX}{name}"
        assert installed[name].version


def test_core_holds_no_table_of_provider_names() -> None:
    assert not hasattr(registry, "KNOWN_PROVIDERS")
    with pytest.raises(errors.ProviderNotFoundError, match=r"pip install ccvault-nosuchstore"):
        registry.load_provider("nosuchstore")


def test_listing_imports_no_provider_module() -> None:
    # a fresh interpreter: other tests in this process have loaded providers already
    probe = (
        "import sys, ccvault.registry as r; names = sorted(r.installed_providers()); "
        "loaded = [m for m in sys.modules if m.split('.')[0] in "
        "('ccvault_inmemory', 'ccvault_sqlite', 'ccvault_postgres', 'ccvault_mongo')]; "
        "print(len(names), loaded)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    count, loaded = result.stdout.split(" ", 1)
    assert int(count) >= 4
    assert loaded.strip() == "[]"


def test_unknown_provider_lists_installed_and_what_to_install() -> None:
    with pytest.raises(errors.ProviderNotFoundError) as raised:
        registry.load_provider("cassandra")
    message = str(raised.value)
    assert "cassandra" in message and "inmemory" in message and "sqlite" in message


def test_known_but_uninstalled_provider_names_its_distribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "installed_providers", lambda: {})
    monkeypatch.setattr(registry, "_loaded", {})
    with pytest.raises(errors.ProviderNotFoundError, match="pip install ccvault-postgres"):
        registry.load_provider("postgres")


def test_load_provider_returns_its_spec() -> None:
    spec = registry.load_provider("inmemory")
    assert spec.name == "inmemory"
    assert spec.distribution == "ccvault-inmemory"


class _Options(BaseModel):
    flavour: str = "plain"


class _InProcessPlugin:
    @hookimpl
    def ccvault_provider(self) -> ProviderSpec:
        from ccvault_inmemory.store import InMemoryProfileStore

        return ProviderSpec(
            name="inprocess-test",
            distribution="(test)",
            settings_model=_Options,
            create_store=lambda options, rules: InMemoryProfileStore(rules=rules),
        )


def test_in_process_registration_and_provider_options() -> None:
    registry.register_provider(_InProcessPlugin())
    settings = ccvault.load_settings(
        store_provider="inprocess-test", providers={"inprocess-test": {"flavour": 3}}
    )
    with pytest.raises(errors.ConfigurationError, match=r"providers\.inprocess-test\.flavour"):
        registry.create_store(settings)


async def test_open_store_yields_a_ready_store() -> None:
    settings = ccvault.load_settings(
        store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False
    )
    tenant = uuid4()
    async with ccvault.open_store(settings) as store:
        profile = await store.get_or_create(tenant, Channel.WHATSAPP, "+15550100")
        again = await store.get_by_channel_identity(tenant, "whatsapp", "+15550100")
        assert again is not None and again.id == profile.id
