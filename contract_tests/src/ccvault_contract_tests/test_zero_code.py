"""Zero-code mode: ``pytest --pyargs ccvault_contract_tests --ccvault-config FILE.toml``.

The store under test is built exactly as an application builds it: ``ccvault.load_settings``
reads the TOML file (plus the environment), ``ccvault.open_store`` finds the provider through
the ``ccvault.providers`` entry point and wraps it in the cache and encryption layers the
file enables. Each test gets its own freshly opened store; the suite works in fresh random
tenants, so a persistent database or a shared server may already hold data. The optional
capabilities are the ones the provider declares in its ``ProviderSpec``.

Without ``--ccvault-config`` this module is skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ccvault import load_settings, open_store
from ccvault.registry import load_provider
from ccvault.store import ProfileStore
from ccvault_contract_tests.contract import ProfileStoreContract
from ccvault_contract_tests.plugin import zero_code_config_path

_CONFIG = zero_code_config_path()
if _CONFIG is None:
    pytest.skip("zero-code mode needs --ccvault-config FILE.toml", allow_module_level=True)

_SETTINGS = load_settings(_CONFIG)
_PROVIDER = load_provider(_SETTINGS.profile.store_provider)


class TestConfiguredStoreContract(ProfileStoreContract):
    """The provider named by ``[profile] store_provider`` in the given file."""

    capabilities = _PROVIDER.capabilities

    @pytest.fixture
    async def store(self) -> AsyncIterator[ProfileStore]:
        async with open_store(load_settings(_CONFIG)) as store:
            yield store
