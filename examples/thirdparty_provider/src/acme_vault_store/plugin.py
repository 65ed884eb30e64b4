"""Registers the ``acme`` provider: the module named by the ``ccvault.providers`` entry point."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from acme_vault_store.store import AcmeProfileStore
from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault.store import ProfileStore, StoreRules

__all__ = ["AcmeSettings", "ccvault_provider"]


class AcmeSettings(BaseModel):
    """``[providers.acme]`` in the vault's TOML."""

    model_config = ConfigDict(extra="forbid")

    audit: bool = True


def _create_store(options: BaseModel, rules: StoreRules) -> ProfileStore:
    assert isinstance(options, AcmeSettings)
    return AcmeProfileStore(audit=options.audit, rules=rules)


@hookimpl
def ccvault_provider() -> ProviderSpec:
    return ProviderSpec(
        name="acme",
        distribution="ccvault-thirdparty-example",
        settings_model=AcmeSettings,
        create_store=_create_store,
        description="ACME example provider (in-memory with an audit trail)",
        capabilities=frozenset({"large_values", "nul_characters"}),
    )
