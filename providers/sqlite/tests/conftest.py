"""Fixtures of the SQLite provider's tests.

Opening a store never changes the schema (``migrate_on_start`` is off by default), so a test
on a new database file first migrates it explicitly, as ``ccvault migrate`` does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ccvault_sqlite import SqliteProfileStore

Migrate = Callable[[Path], Awaitable[Path]]


async def migrate_file(path: Path) -> Path:
    """Create and migrate the database file ``path`` (the explicit step); return it."""
    await SqliteProfileStore(path=path).migrate()
    return path


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """A new database file at the latest schema version."""
    return await migrate_file(tmp_path / "vault.db")


@pytest.fixture
def migrate() -> Migrate:
    """``await migrate(path)``: create and migrate the database file ``path``."""
    return migrate_file
