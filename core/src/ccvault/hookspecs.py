"""Every pluggy hook specification of the vault, each with its contract.

A provider is a module registered under the ``ccvault.providers`` entry-point group (the
built-in providers register exactly like third-party ones). The module carries
implementations of the hooks below, marked with :data:`hookimpl`: ``ccvault_provider``
(required: what the provider is) and ``ccvault_worker_lease`` (optional: a tenant lease of
its own for ``ccvault worker``). Core never names a provider; it asks these hooks.

The store a provider builds implements the *store hooks*: the ``_``-prefixed methods of
:class:`~ccvault.store.ProfileStore`, each documented there with its contract (the module
docstring of :mod:`ccvault.store` lists them all). Some are optional extension points with a
default derived from others (for example ``_get_requirement_records``, what
``get_missing_fields`` reads, derived from ``_get_requirement_checks``, itself derived from
``_get_requirements_with_definitions``); a
provider overrides one only to answer it cheaper, and the override must agree with the
default. contract_tests/README.md tables every hook with its contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pluggy
from pydantic import BaseModel

from ccvault.lease import TenantLease
from ccvault.store import ProfileStore
from ccvault.store_rules import StoreRules

if TYPE_CHECKING:
    from ccvault.settings import VaultSettings

__all__ = [
    "PROJECT_NAME",
    "ProviderHookSpecs",
    "ProviderSpec",
    "TenantLease",
    "hookimpl",
    "hookspec",
]

PROJECT_NAME = "ccvault"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class ProviderSpec:
    """What a provider tells the vault about itself.

    ``settings_model`` validates the provider's ``[providers.NAME]`` table;
    ``create_store(options, rules)`` builds an unopened store from the validated options
    (``open_store`` then runs its ``setup()``). ``single_host``: every store of this
    provider lives on one host (an embedded file, process memory), so the worker's claim
    files keep several workers apart (``[worker] lease = "auto"`` without Redis picks them;
    otherwise it needs Redis or a lease the provider contributes).
    """

    name: str
    distribution: str
    settings_model: type[BaseModel]
    create_store: Callable[[BaseModel, StoreRules], ProfileStore]
    description: str = ""
    capabilities: frozenset[str] = field(default_factory=frozenset)
    single_host: bool = False


class ProviderHookSpecs:
    """Hooks a provider module implements."""

    @hookspec
    def ccvault_provider(self) -> ProviderSpec:  # type: ignore[empty-body]
        """Describe the storage provider this module contributes.

        Called once when the provider is first selected or listed with details. Must be
        cheap and free of I/O: connections are made later, by the store's ``setup()``.
        The returned ``name`` must equal the entry point's name.
        """

    @hookspec(firstresult=True)
    def ccvault_worker_lease(self, kind: str, settings: VaultSettings) -> TenantLease | None:
        """A tenant lease for ``ccvault worker``, or None when this module has none for
        ``kind``.

        ``kind`` is ``[worker] lease`` as configured: a name the module owns (by convention
        its provider's name, e.g. ``"postgres"``), for which it returns its lease; or
        ``"auto"`` when the cache is off, for which it returns its lease only if
        ``settings.profile.store_provider`` is its own provider and the lease keeps workers
        on several hosts apart. Any other ``kind``: None. The first non-None answer wins.

        Must be cheap and free of I/O (the lease connects on its first ``acquire``); a bad
        ``[providers.NAME]`` table raises :class:`~ccvault.errors.ConfigurationError`. The
        lease must honour :class:`~ccvault.lease.TenantLease`: exclusive, re-entrant, kept
        at least ``ttl_seconds`` after the last acquire/renew, ``renew`` False (never
        raising) once the claim may be lost.
        """
