"""The ``sqlite`` provider's registration (entry point ``ccvault.providers: sqlite``)."""

from __future__ import annotations

from pydantic import BaseModel

from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault.store import ProfileStore, StoreRules
from ccvault_sqlite.settings import SqliteSettings

__all__ = ["CAPABILITIES", "ccvault_provider", "create_store"]

#: Optional contract capabilities (see ``ccvault_contract_tests.capabilities``).
CAPABILITIES = frozenset({"large_values", "nul_characters", "high_concurrency"})


def create_store(options: BaseModel, rules: StoreRules) -> ProfileStore:
    """An unopened :class:`~ccvault_sqlite.store.SqliteProfileStore` for ``options``."""
    from ccvault_sqlite.store import SqliteProfileStore

    settings = (
        options
        if isinstance(options, SqliteSettings)
        else SqliteSettings.model_validate(options.model_dump())
    )
    store = SqliteProfileStore(settings, rules=rules)
    store.capabilities = CAPABILITIES
    return store


@hookimpl
def ccvault_provider() -> ProviderSpec:
    """The embedded SQLite provider: no server, one file (or ``:memory:``)."""
    return ProviderSpec(
        name="sqlite",
        distribution="ccvault-sqlite",
        settings_model=SqliteSettings,
        create_store=create_store,
        description="Embedded SQLite database through aiosqlite (WAL mode); no server needed",
        capabilities=CAPABILITIES,
        single_host=True,  # one file / one process: the worker's claim files suffice
    )
