"""Zero-code mode: ``pytest --pyargs ccvault_contract_tests --ccvault-config FILE.toml``.

The store under test is built exactly as an application builds it: ``ccvault.load_settings``
reads the TOML file (plus the environment), ``ccvault.open_store`` finds the provider through
the ``ccvault.providers`` entry point and wraps it in the cache and encryption layers the
file enables. Each test gets its own freshly opened store, and the cross-instance tests a
second one opened from the same file — as a second application process would open it — which
must see the first one's data (checked before those tests run). The suite works in fresh
random tenants, so a persistent database or a shared server may already hold data. The
optional capabilities are the ones the provider declares in its ``ProviderSpec``. The
schema is migrated first (``ccvault.migrate_schema``, what ``ccvault migrate`` does).

Without ``--ccvault-config`` this module is skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest

from ccvault import load_settings, migrate_schema, open_store
from ccvault.models import Channel
from ccvault.store import ProfileStore
from ccvault_contract_tests.contract import ProfileStoreContract
from ccvault_contract_tests.plugin import zero_code_config_path

_CONFIG = zero_code_config_path()
if _CONFIG is None:
    pytest.skip("zero-code mode needs --ccvault-config FILE.toml", allow_module_level=True)

_SETTINGS = load_settings(_CONFIG)


class TestConfiguredStoreContract(ProfileStoreContract):
    """The provider named by ``[profile] store_provider`` in the given file."""

    provider_name = _SETTINGS.profile.store_provider

    @pytest.fixture
    async def store(self) -> AsyncIterator[ProfileStore]:
        settings = load_settings(_CONFIG)
        # the deployment's explicit step (idempotent): opening a store never migrates
        await migrate_schema(settings)
        async with open_store(settings) as store:
            yield store

    @pytest.fixture
    async def other_store(self, store: ProfileStore) -> AsyncIterator[ProfileStore]:
        """A second instance opened from the same file: a second process of the deployment."""
        async with open_store(load_settings(_CONFIG)) as other:
            tenant = uuid4()
            probe = await store.get_or_create(tenant, Channel.API, f"contract-probe-{uuid4()}")
            seen = await other.get_by_id(tenant, probe.id)
            await store.purge_profile(tenant, probe.id)
            if seen is None:
                pytest.fail(
                    f"two stores opened from {_CONFIG} do not share their data (a profile "
                    "written through one is not visible through the other), so the "
                    "cross-instance tests cannot run: configure the provider so that every "
                    "instance opened from this file reads and writes the same backing data",
                    pytrace=False,
                )
            yield other
