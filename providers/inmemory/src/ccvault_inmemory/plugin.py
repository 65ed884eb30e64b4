"""Registers the in-memory provider under the ``ccvault.providers`` entry point."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pydantic import BaseModel, ConfigDict

from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault.store import ProfileStore, StoreRules
from ccvault_inmemory.store import InMemoryProfileStore

__all__ = ["InMemorySettings", "ccvault_provider"]


class InMemorySettings(BaseModel):
    """``[providers.inmemory]``: the in-memory store has no options; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


def _create_store(options: BaseModel, rules: StoreRules) -> ProfileStore:
    # the options were validated against InMemorySettings already; there is nothing to read
    return InMemoryProfileStore(rules=rules)


def _distribution_version() -> str:
    try:
        return version("ccvault-inmemory")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


@hookimpl
def ccvault_provider() -> ProviderSpec:
    """The in-memory provider: no persistence, for tests, demos and as the reference."""
    return ProviderSpec(
        name="inmemory",
        distribution="ccvault-inmemory",
        settings_model=InMemorySettings,
        create_store=_create_store,
        description=f"dict-based reference store, nothing persisted ({_distribution_version()})",
        capabilities=InMemoryProfileStore.capabilities,
        single_host=True,  # one file / one process: the worker's claim files suffice
    )
