"""Issue 12: the SQLite file (and its -wal/-shm) is private, deleted content is zeroed, and
a purge leaves no trace of the customer in the database file or the WAL while it runs."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from ccvault.models import Channel, ProfileAsset, ProfileField
from ccvault_sqlite import SqliteProfileStore

PHONE = "+4915199988877"
EMAIL = "purge-me-7c1f@example.org"
PATH_SECRET = "scans/purge-me-passport-88.png"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


async def test_database_and_wal_files_are_created_private(umask_022: None, db: Path) -> None:
    async with SqliteProfileStore(path=db) as store:
        pid = (await store.get_or_create(uuid4(), Channel.WEB, "visitor")).id
        assert pid is not None
        for file in _files(db):
            assert file.exists() and _mode(file) == 0o600, file


async def test_an_existing_world_readable_database_is_narrowed(umask_022: None, db: Path) -> None:
    async with SqliteProfileStore(path=db):
        pass
    os.chmod(db, 0o644)
    async with SqliteProfileStore(path=db):
        assert _mode(db) == 0o600


async def test_secure_delete_is_on(db: Path) -> None:
    async with SqliteProfileStore(path=db) as store:
        rows = await store.connection.execute_fetchall("PRAGMA secure_delete")
        assert next(iter(rows))[0] == 1


async def test_purged_pii_survives_neither_in_the_database_nor_in_the_wal(db: Path) -> None:
    tenant = uuid4()
    async with SqliteProfileStore(path=db) as store:
        keep = (await store.get_or_create(tenant, Channel.WEB, "another-customer")).id
        await store.update_field(tenant, keep, ProfileField(name="nickname", value="stays"))
        pid = (await store.get_or_create(tenant, Channel.WHATSAPP, PHONE)).id
        await store.update_field(tenant, pid, ProfileField(name="email", value=EMAIL))
        await store.update_field(tenant, pid, ProfileField(name="email", value="x" + EMAIL))
        await store.add_asset(
            tenant,
            pid,
            ProfileAsset(
                name="passport",
                asset_type="id_document",
                storage_provider="s3",
                storage_path=PATH_SECRET,
                mime_type="image/png",
                size_bytes=1,
                checksum="0" * 64,
            ),
        )
        before = b"".join(f.read_bytes() for f in _files(db) if f.exists())
        assert PHONE.encode() in before and EMAIL.encode() in before  # the scan sees them
        assert await store.purge_profile(tenant, pid)
        # the store is still running: the -wal file has been checkpointed and truncated
        wal = db.with_name(db.name + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0
        after = b"".join(f.read_bytes() for f in _files(db) if f.exists())
        for secret in (PHONE, EMAIL, PATH_SECRET):
            assert secret.encode() not in after, secret
        assert b"another-customer" in after  # what was not purged is still there
