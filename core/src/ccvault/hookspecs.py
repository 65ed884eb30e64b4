"""Every pluggy hook specification of the vault, each with its contract.

A provider is a module registered under the ``ccvault.providers`` entry-point group (the
built-in providers register exactly like third-party ones). The module carries
implementations of the hooks below, marked with :data:`hookimpl`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pluggy
from pydantic import BaseModel

from ccvault.store import ProfileStore
from ccvault.store_rules import StoreRules

__all__ = ["PROJECT_NAME", "ProviderHookSpecs", "ProviderSpec", "hookimpl", "hookspec"]

PROJECT_NAME = "ccvault"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class ProviderSpec:
    """What a provider tells the vault about itself.

    ``settings_model`` validates the provider's ``[providers.NAME]`` table;
    ``create_store(options, rules)`` builds an unopened store from the validated options
    (``open_store`` then runs its ``setup()``).
    """

    name: str
    distribution: str
    settings_model: type[BaseModel]
    create_store: Callable[[BaseModel, StoreRules], ProfileStore]
    description: str = ""
    capabilities: frozenset[str] = field(default_factory=frozenset)


class ProviderHookSpecs:
    """Hooks a provider module implements."""

    @hookspec
    def ccvault_provider(self) -> ProviderSpec:  # type: ignore[empty-body]
        """Describe the storage provider this module contributes.

        Called once when the provider is first selected or listed with details. Must be
        cheap and free of I/O: connections are made later, by the store's ``setup()``.
        The returned ``name`` must equal the entry point's name.
        """
