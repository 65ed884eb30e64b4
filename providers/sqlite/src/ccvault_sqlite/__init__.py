"""ccvault-sqlite: the vault's embedded provider, one SQLite file through aiosqlite.

``SqliteProfileStore(path="/var/lib/ccvault/vault.db")`` or, through configuration,
``[profile] store_provider = "sqlite"`` with ``[providers.sqlite] path = ...``.
"""

from __future__ import annotations

from ccvault_sqlite.schema import LATEST_VERSION
from ccvault_sqlite.settings import SqliteSettings
from ccvault_sqlite.store import SqliteProfileStore

__all__ = ["LATEST_VERSION", "SqliteProfileStore", "SqliteSettings"]
