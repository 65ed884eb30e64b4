"""Provider discovery and store composition.

Providers are found through the ``ccvault.providers`` entry-point group and loaded lazily:
listing them reads only the installed distributions' metadata, and a provider's module is
imported only when it is selected. A name that no installed distribution provides gives an
error that lists what is installed and says which distribution to install.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

import pluggy
import pydantic

from ccvault import errors
from ccvault.hookspecs import PROJECT_NAME, ProviderHookSpecs, ProviderSpec
from ccvault.lease import TenantLease
from ccvault.migration import MigrationReport
from ccvault.settings import VaultSettings
from ccvault.store import ProfileStore

__all__ = [
    "DISTRIBUTION_PREFIX",
    "ENTRY_POINT_GROUP",
    "InstalledProvider",
    "create_store",
    "installed_providers",
    "load_provider",
    "migrate_schema",
    "open_store",
    "register_provider",
    "worker_lease",
]

ENTRY_POINT_GROUP = "ccvault.providers"

#: A provider named NAME is published by convention as the distribution ``ccvault-NAME``.
DISTRIBUTION_PREFIX = "ccvault-"


@dataclass(frozen=True)
class InstalledProvider:
    """A provider found in the installed distributions' metadata (nothing imported)."""

    name: str
    distribution: str
    version: str
    entry_point: EntryPoint


_plugin_manager = pluggy.PluginManager(PROJECT_NAME)
_plugin_manager.add_hookspecs(ProviderHookSpecs)
_loaded: dict[str, ProviderSpec] = {}


def installed_providers() -> dict[str, InstalledProvider]:
    """Every provider registered under the entry-point group, by name, without importing."""
    found: dict[str, InstalledProvider] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        found[entry_point.name] = InstalledProvider(
            name=entry_point.name,
            distribution=dist.name if dist is not None else "?",
            version=dist.version if dist is not None else "?",
            entry_point=entry_point,
        )
    return dict(sorted(found.items()))


def register_provider(plugin: object | ModuleType) -> list[ProviderSpec]:
    """Register a provider plugin object in-process (as the entry point would) and return
    the specs it contributes. Useful for tests and applications that ship their own."""
    if not _plugin_manager.is_registered(plugin):
        _plugin_manager.register(plugin)
    specs = [
        spec for spec in _plugin_manager.hook.ccvault_provider() if isinstance(spec, ProviderSpec)
    ]
    for spec in specs:
        _loaded.setdefault(spec.name, spec)
    return specs


def load_provider(name: str) -> ProviderSpec:
    """The spec of provider ``name``, importing its module on first use."""
    if name in _loaded:
        return _loaded[name]
    installed = installed_providers()
    if name not in installed:
        listing = ", ".join(f"{p.name} ({p.distribution} {p.version})" for p in installed.values())
        hint = (
            f"install the distribution that provides it (by convention: pip install "
            f"{DISTRIBUTION_PREFIX}{name})"
        )
        raise errors.ProviderNotFoundError(
            f"no storage provider named {name!r} is installed; {hint}. "
            f"Installed providers: {listing or 'none'}"
        )
    try:
        module = installed[name].entry_point.load()
    except ImportError as exc:
        raise errors.ProviderNotFoundError(
            f"provider {name!r} is registered by {installed[name].distribution} but cannot be "
            f"imported ({exc}); reinstall {installed[name].distribution}"
        ) from exc
    register_provider(module)
    if name not in _loaded:
        raise errors.ConfigurationError(
            f"entry point {name!r} of {installed[name].distribution} did not declare a "
            f"provider named {name!r} through the ccvault_provider hook"
        )
    return _loaded[name]


def worker_lease(kind: str, settings: VaultSettings) -> TenantLease | None:
    """The tenant lease a provider contributes for ``[worker] lease = kind`` through the
    ``ccvault_worker_lease`` hook, or None when none does.

    The configured provider is loaded first (its module may contribute for ``auto``), and
    so is a provider named ``kind`` when one is installed (a provider-specific lease is
    named after its provider by convention).
    """
    load_provider(settings.profile.store_provider)
    if kind != "auto" and kind in installed_providers():
        load_provider(kind)
    lease: TenantLease | None = _plugin_manager.hook.ccvault_worker_lease(
        kind=kind, settings=settings
    )
    return lease


def create_store(settings: VaultSettings) -> ProfileStore:
    """The configured provider's store, unopened and unwrapped."""
    name = settings.profile.store_provider
    spec = load_provider(name)
    try:
        options = spec.settings_model.model_validate(settings.provider_options(name))
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"providers.{name}.{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}"
            for problem in exc.errors()
        )
        raise errors.ConfigurationError(f"invalid settings: {problems}") from None
    return spec.create_store(options, settings.profile.store_rules())


async def migrate_schema(settings: VaultSettings, *, dry_run: bool = False) -> MigrationReport:
    """What ``ccvault migrate`` does, from code: apply the configured provider's pending
    schema migrations (``dry_run``: report them, change nothing). The store is not opened
    (no cache, no keys needed); run it with a role allowed to change the schema, before
    :func:`open_store`, which never changes it."""
    store = create_store(settings)
    try:
        return await store.migrate(dry_run=dry_run)
    finally:
        await store.aclose()


@contextlib.asynccontextmanager
async def open_store(settings: VaultSettings) -> AsyncIterator[ProfileStore]:
    """The composed, ready store: provider, then cache, then encryption, as configured.

    ``setup()`` has run when the block starts; everything is closed when it ends.
    """
    if settings.tracing.enabled:  # never turned off here: another store may be traced
        from ccvault import tracing

        tracing.configure(enabled=True, tenant_ids=settings.tracing.tenant_ids)
    store: ProfileStore = create_store(settings)
    if settings.profile.cache_enabled:
        from ccvault.cache import CachedProfileStore

        store = CachedProfileStore.from_settings(store, settings)
    if settings.profile.auto_encrypt_pii:
        from ccvault.crypto import EncryptedProfileStore

        store = EncryptedProfileStore.from_settings(store, settings)
    async with store:
        yield store
