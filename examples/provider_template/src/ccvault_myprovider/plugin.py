"""The module the ``ccvault.providers`` entry point names: one pluggy hook, ``ccvault_provider``.

Cheap and free of I/O: ``setup()`` of the store connects later.
"""

from __future__ import annotations

from pydantic import BaseModel

from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault.store import ProfileStore, StoreRules
from ccvault_myprovider.settings import MySettings

__all__ = ["CAPABILITIES", "ccvault_provider"]

#: The optional contract capabilities this provider promises, declared here and nowhere
#: else (``ccvault_contract_tests.capabilities.OPTIONAL_CAPABILITIES``): "large_values",
#: "nul_characters", "high_concurrency". The contract suite runs their tests when declared.
CAPABILITIES: frozenset[str] = frozenset()


def _create_store(options: BaseModel, rules: StoreRules) -> ProfileStore:
    from ccvault_myprovider.store import MyProfileStore

    settings = (
        options
        if isinstance(options, MySettings)
        else MySettings.model_validate(options.model_dump())
    )
    return MyProfileStore(settings, rules=rules)


@hookimpl
def ccvault_provider() -> ProviderSpec:
    return ProviderSpec(
        name="myprovider",  # the entry point's name, and [profile] store_provider
        distribution="ccvault-myprovider",
        settings_model=MySettings,
        create_store=_create_store,
        description="My backend (made from the ccvault provider template)",
        capabilities=CAPABILITIES,
    )
