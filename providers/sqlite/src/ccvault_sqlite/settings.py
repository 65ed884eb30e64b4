"""``[providers.sqlite]``: where the database file lives and how contention is handled."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ccvault.settings import expand_env

__all__ = ["MEMORY", "SqliteSettings"]

MEMORY = ":memory:"
"""The path of a private in-memory database: one per store, gone when the store closes."""


class SqliteSettings(BaseModel):
    """Options of the SQLite provider.

    ``path`` is a file path (relative paths are relative to the working directory; a
    leading ``~`` is expanded) or ``":memory:"``. The parent folder of a file is created on
    ``setup()`` when ``create_parent_dirs`` is true.

    Contention: every write takes SQLite's write lock up front (``BEGIN IMMEDIATE``).
    SQLite itself waits up to ``busy_timeout_ms`` for the lock; if it is still held, the
    whole transaction is rolled back and run again, ``lock_retry_attempts`` times in all,
    with exponential back-off between attempts (``lock_retry_initial_ms``, doubling, capped
    at ``lock_retry_max_ms``, with jitter); then
    :class:`~ccvault.errors.ProviderUnavailableError` is raised and nothing is written.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    #: ``${VAR}`` references are expanded; the default lives in the data directory
    #: (``$CCVAULT_DATA_DIR``, else ``$XDG_DATA_HOME/ccvault`` or ``~/.local/share/ccvault``),
    #: never relative to the working directory, so every command finds the same file
    path: str = "${CCVAULT_DATA_DIR}/vault.db"
    busy_timeout_ms: int = Field(default=5000, ge=0, le=600_000)
    lock_retry_attempts: int = Field(default=8, ge=1, le=1000)
    lock_retry_initial_ms: float = Field(default=10.0, ge=0)
    lock_retry_max_ms: float = Field(default=1000.0, ge=0)
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    create_parent_dirs: bool = True
    #: Apply pending schema migrations when a store opens the file (creating it). Off by
    #: default: opening never changes the schema, ``ccvault migrate`` does, and a missing
    #: file is refused without being created. The embedded settings
    #: (``ccvault.embedded_settings()``, ``config/embedded.toml``) turn it on: a local,
    #: single-user file has no separate migration step. A ``":memory:"`` database, private
    #: to its store, is always migrated when opened.
    migrate_on_start: bool = False

    @field_validator("path", mode="before")
    @classmethod
    def _expand_path(cls, value: object) -> object:
        return expand_env(value)

    @field_validator("path")
    @classmethod
    def _path_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("path must be a file path or ':memory:'")
        if "\x00" in value:
            raise ValueError("path must not contain NUL characters")
        return value

    @property
    def in_memory(self) -> bool:
        """True for a private in-memory database."""
        return self.path == MEMORY
