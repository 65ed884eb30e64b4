"""The ``postgres`` entry point of the ``ccvault.providers`` group."""

from __future__ import annotations

from pydantic import BaseModel

from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault.lease import TenantLease
from ccvault.settings import VaultSettings
from ccvault.store import ProfileStore, StoreRules
from ccvault_postgres.settings import PostgresSettings

#: Optional contract capabilities (``ccvault_contract_tests.capabilities``), declared once.
#: Not ``nul_characters``: PostgreSQL text and jsonb cannot hold U+0000.
CAPABILITIES = frozenset({"large_values", "high_concurrency"})


def _create_store(options: BaseModel, rules: StoreRules) -> ProfileStore:
    from ccvault_postgres.store import PostgresProfileStore

    settings = (
        options
        if isinstance(options, PostgresSettings)
        else PostgresSettings.model_validate(options.model_dump(by_alias=True))
    )
    return PostgresProfileStore(settings, rules=rules)


@hookimpl
def ccvault_provider() -> ProviderSpec:
    """The PostgreSQL provider. Cheap, no I/O: the pool is opened by the store's setup()."""
    return ProviderSpec(
        name="postgres",
        distribution="ccvault-postgres",
        settings_model=PostgresSettings,
        create_store=_create_store,
        description="PostgreSQL on asyncpg: the production store",
        capabilities=CAPABILITIES,
    )


@hookimpl
def ccvault_worker_lease(kind: str, settings: VaultSettings) -> TenantLease | None:
    """Tenant claims in the vault's database (``ccvault_worker_claims``) for ``[worker]
    lease = "postgres"``, and for ``"auto"`` when the configured provider is this one.
    Cheap: connects on first use."""
    if kind == "postgres" or (kind == "auto" and settings.profile.store_provider == "postgres"):
        from ccvault_postgres.lease import PostgresTenantLease

        return PostgresTenantLease.from_settings(settings)
    return None
