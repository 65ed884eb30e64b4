"""The ``mongo`` entry point of the ``ccvault.providers`` group."""

from __future__ import annotations

from pydantic import BaseModel

from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault.store import ProfileStore, StoreRules
from ccvault_mongo.settings import MongoSettings

__all__ = ["CAPABILITIES", "ccvault_provider", "create_store"]

#: Optional contract capabilities (``ccvault_contract_tests.capabilities``), declared once.
CAPABILITIES = frozenset({"large_values", "nul_characters", "high_concurrency"})


def create_store(options: BaseModel, rules: StoreRules) -> ProfileStore:
    """An unopened :class:`~ccvault_mongo.store.MongoProfileStore` (``setup()`` connects)."""
    from ccvault_mongo.store import MongoProfileStore

    settings = (
        options
        if isinstance(options, MongoSettings)
        else MongoSettings.model_validate(options.model_dump())
    )
    return MongoProfileStore(settings, rules=rules)


@hookimpl
def ccvault_provider() -> ProviderSpec:
    """The MongoDB provider: PyMongo's native async API, transactions on replica sets."""
    return ProviderSpec(
        name="mongo",
        distribution="ccvault-mongo",
        settings_model=MongoSettings,
        create_store=create_store,
        description="MongoDB via PyMongo's async API (AsyncMongoClient)",
        capabilities=CAPABILITIES,
    )
