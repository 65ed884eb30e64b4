"""ACME's example third-party ccvault provider (a thin layer over the in-memory store)."""

from acme_vault_store.store import AcmeProfileStore

__all__ = ["AcmeProfileStore"]
