"""Registers the in-memory provider under the ``ccvault.providers`` entry point."""

from __future__ import annotations

import asyncio
import weakref
from importlib.metadata import PackageNotFoundError, version

from pydantic import BaseModel, ConfigDict, Field

from ccvault.hookspecs import ProviderSpec, hookimpl
from ccvault.store import ProfileStore, StoreRules
from ccvault_inmemory.store import InMemoryProfileStore

__all__ = ["CAPABILITIES", "InMemorySettings", "ccvault_provider"]

#: Optional contract capabilities (``ccvault_contract_tests.capabilities``), declared once.
CAPABILITIES = frozenset({"large_values", "nul_characters", "high_concurrency"})


class InMemorySettings(BaseModel):
    """``[providers.inmemory]``; unknown keys are refused.

    ``shared_state``: stores opened with the same name on the same event loop read and write
    one backing state (under one lock), as two processes share one database — what the
    contract suite's zero-code mode needs for its second instance. Empty (the default):
    every store holds its own private data.
    """

    model_config = ConfigDict(extra="forbid")

    shared_state: str = Field(default="", max_length=200)


#: per event loop: the first store opened under each ``shared_state`` name (the state's
#: anchor). A new loop starts empty: an asyncio lock cannot be shared across loops.
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, InMemoryProfileStore]]
_SHARED = weakref.WeakKeyDictionary()


def _create_store(options: BaseModel, rules: StoreRules) -> ProfileStore:
    settings = (
        options
        if isinstance(options, InMemorySettings)
        else InMemorySettings.model_validate(options.model_dump())
    )
    store = InMemoryProfileStore(rules=rules)
    if settings.shared_state:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop: nothing to share the lock with yet
            return store
        anchors = _SHARED.setdefault(loop, {})
        anchor = anchors.setdefault(settings.shared_state, store)
        if anchor is not store:
            store.share_state_with(anchor)
    return store


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
        capabilities=CAPABILITIES,
        single_host=True,  # one file / one process: the worker's claim files suffice
    )
