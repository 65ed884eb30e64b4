"""ccvault, the Customer Context Vault: what an AI agent platform knows about each customer.

Entry points: :func:`load_settings` builds the validated settings (:func:`embedded_settings`:
SQLite in the user's data directory, no servers); :func:`open_store` yields
the composed, ready :class:`~ccvault.store.ProfileStore`; :func:`migrate_schema` applies the
provider's schema migrations (``ccvault migrate``), which opening never does.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ccvault.registry import migrate_schema, open_store
from ccvault.settings import VaultSettings, embedded_settings, load_settings
from ccvault.store import ProfileStore

try:
    __version__ = version("ccvault")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ProfileStore",
    "VaultSettings",
    "__version__",
    "embedded_settings",
    "load_settings",
    "migrate_schema",
    "open_store",
]
