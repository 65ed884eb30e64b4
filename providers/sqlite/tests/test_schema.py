"""Schema, migrations and start-up checks of the SQLite store."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import aiosqlite
import pytest

from ccvault import errors
from ccvault.models import Channel, ItemStatus, ProfileField
from ccvault_sqlite import LATEST_VERSION, SqliteProfileStore, SqliteSettings
from ccvault_sqlite.schema import MIGRATIONS, VERSION_TABLE, migrate

NOW = "2026-01-02T03:04:05.000000+00:00"


def fingerprint(path: Path) -> tuple[str, int, int]:
    """Content hash, size and mtime: what "the file is untouched" means."""
    data = path.read_bytes()
    info = path.stat()
    return hashlib.sha256(data).hexdigest(), info.st_size, info.st_mtime_ns


def sidecars(path: Path) -> list[Path]:
    return [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}


def versions(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute(f"SELECT version FROM {VERSION_TABLE} ORDER BY 1")]
    finally:
        conn.close()


async def test_migrate_creates_the_parent_folder_wal_and_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "vault.db"
    report = await SqliteProfileStore(path=path).migrate()
    assert [s.version for s in report.applied] == [m.version for m in MIGRATIONS]
    assert report.status.up_to_date and not report.dry_run
    async with SqliteProfileStore(path=path) as store:
        mode = await store.connection.execute_fetchall("PRAGMA journal_mode")
        assert next(iter(mode))[0] == "wal"
        keys = await store.connection.execute_fetchall("PRAGMA foreign_keys")
        assert next(iter(keys))[0] == 1
    assert path.is_file()
    assert versions(path) == [m.version for m in MIGRATIONS] and LATEST_VERSION >= 2


def files_in(folder: Path) -> list[Path]:
    return list(folder.iterdir())


async def test_memory_database_needs_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with SqliteProfileStore(path=":memory:") as store:
        mode = await store.connection.execute_fetchall("PRAGMA journal_mode")
        assert next(iter(mode))[0] == "memory"
        profile = await store.get_or_create(uuid4(), Channel.WEB, "visitor-1")
        assert await store.get_by_id(profile.tenant_id, profile.id) is not None
    assert files_in(tmp_path) == []


async def test_setup_is_idempotent_and_reopening_keeps_data(db: Path) -> None:
    path = db
    tenant = uuid4()
    async with SqliteProfileStore(path=path) as store:
        await store.setup()  # a second setup on an open store is a no-op
        profile = await store.get_or_create(tenant, Channel.SMS, "+15550001")
    async with SqliteProfileStore(path=path) as store:
        again = await store.get_or_create(tenant, Channel.SMS, "+15550001")
        assert again.id == profile.id
    assert versions(path) == [m.version for m in MIGRATIONS]


async def test_concurrent_migrators_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    reports = await asyncio.gather(*(SqliteProfileStore(path=path).migrate() for _ in range(4)))
    applied = sorted(tuple(s.version for s in r.applied) for r in reports)
    # the first through the write lock applied every step; the others found nothing left
    assert applied == [(), (), (), tuple(m.version for m in MIGRATIONS)]
    assert all(r.status.up_to_date for r in reports)
    assert versions(path) == [m.version for m in MIGRATIONS]


async def test_upgrade_from_migration_1_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    tenant, profile_id, field_id = uuid4(), uuid4(), uuid4()
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn, NOW, target=1) == 1
        await conn.execute(
            "INSERT INTO profiles VALUES (?, ?, ?, 'unverified', ?, ?, NULL, NULL)",
            (str(tenant), str(profile_id), str(uuid4()), NOW, NOW),
        )
        await conn.execute(
            "INSERT INTO channel_identities VALUES (?, 'sms', '+15550002', ?, 0, 0, NULL, 1, ?)",
            (str(tenant), str(profile_id), NOW),
        )
        await conn.execute(
            "INSERT INTO fields (tenant_id, id, profile_id, name, value, value_type, source, "
            "source_metadata, status, verified, confidence, requires_confirmation, collected_at, "
            "updated_at, seq) VALUES (?, ?, ?, 'city', '\"Oslo\"', 'string', 'user_provided', "
            "'{}', 'active', 0, 1.0, 0, ?, ?, 1)",
            (str(tenant), str(field_id), str(profile_id), NOW, NOW),
        )
    assert versions(path) == [1]
    assert "fields_by_source" not in indexes(path)

    # opening does not upgrade: it names the explicit step and leaves the file as it was
    before = fingerprint(path)
    with pytest.raises(errors.SchemaNotReadyError, match=r"version 1, behind.*ccvault migrate"):
        async with SqliteProfileStore(path=path):
            pass
    assert fingerprint(path) == before
    report = await SqliteProfileStore(path=path).migrate()
    assert [s.version for s in report.applied] == [m.version for m in MIGRATIONS[1:]]

    async with SqliteProfileStore(path=path) as store:
        found = await store.get_by_channel_identity(tenant, Channel.SMS, "+15550002")
        assert found is not None and found.id == profile_id
        assert found.fields["city"].id == field_id and found.fields["city"].value == "Oslo"
        assert found.fields["city"].collected_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        # and the upgraded database takes writes as usual
        await store.update_field(tenant, profile_id, ProfileField(name="city", value="Rome"))
        old = await store.get_field(tenant, profile_id, "city", status=ItemStatus.SUPERSEDED)
        assert old is not None and old.id == field_id

    assert versions(path) == [m.version for m in MIGRATIONS]
    assert {"fields_by_source", "assets_by_source", "fields_expiring"} <= indexes(path)


async def test_a_newer_schema_is_refused_and_the_file_untouched(db: Path) -> None:
    path = db
    with sqlite3.connect(path) as conn:
        conn.execute(
            f"INSERT INTO {VERSION_TABLE} VALUES (?, 'from the future', ?)",
            (LATEST_VERSION + 1, NOW),
        )
    conn.close()
    before = fingerprint(path)
    newer = rf"version {LATEST_VERSION + 1}, newer .*\(latest {LATEST_VERSION}\)"
    with pytest.raises(errors.SchemaVersionError, match=newer):
        async with SqliteProfileStore(path=path):
            pass
    for dry_run in (True, False):
        with pytest.raises(errors.SchemaVersionError, match=newer):
            await SqliteProfileStore(path=path).migrate(dry_run=dry_run)
    assert fingerprint(path) == before
    assert sidecars(path) == []


async def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    path.write_text("name,email\nada,ada@example.com\n")
    before = fingerprint(path)
    with pytest.raises(errors.StorageError, match="not a SQLite database"):
        async with SqliteProfileStore(path=path):
            pass
    assert fingerprint(path) == before
    assert sidecars(path) == []


async def test_a_corrupt_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4080))
    before = fingerprint(path)
    with pytest.raises(errors.StorageError):
        async with SqliteProfileStore(path=path):
            pass
    assert fingerprint(path) == before


async def test_a_read_only_file_is_refused_untouched(db: Path) -> None:
    path = db
    async with SqliteProfileStore(path=path) as store:
        await store.get_or_create(uuid4(), Channel.WEB, "v-1")
    path.chmod(stat.S_IRUSR | stat.S_IRGRP)
    before = fingerprint(path)
    try:
        with pytest.raises(errors.StorageError, match="read-only"):
            async with SqliteProfileStore(path=path):
                pass
        assert fingerprint(path) == before
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


async def test_another_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE profiles (id INTEGER PRIMARY KEY, nick TEXT)")
    conn.close()
    before = fingerprint(path)
    with pytest.raises(errors.StorageError, match="not created by ccvault"):
        async with SqliteProfileStore(path=path):
            pass
    assert fingerprint(path) == before


async def test_a_directory_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.StorageError, match="not a regular file"):
        async with SqliteProfileStore(path=tmp_path):
            pass


async def test_missing_folder_without_create_parent_dirs_is_refused(tmp_path: Path) -> None:
    settings = SqliteSettings(path=str(tmp_path / "nope" / "vault.db"), create_parent_dirs=False)
    with pytest.raises(errors.StorageError, match="does not exist"):
        await SqliteProfileStore(settings).migrate()
    assert not (tmp_path / "nope").exists()


async def test_the_database_itself_keeps_one_active_version_per_name(db: Path) -> None:
    """The partial unique index holds even for a writer that bypasses the store."""
    path = db
    tenant = uuid4()
    async with SqliteProfileStore(path=path) as store:
        profile = await store.get_or_create(tenant, Channel.WEB, "v-2")
        await store.update_field(tenant, profile.id, ProfileField(name="email", value="a@x.org"))
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            "SELECT * FROM fields WHERE tenant_id = ? AND name = 'email'", (str(tenant),)
        ).fetchone()
        columns = [d[1] for d in conn.execute("PRAGMA table_info(fields)")]
        duplicate = dict(zip(columns, row, strict=True))
        duplicate["id"] = str(uuid4())
        duplicate["seq"] += 1000
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                f"INSERT INTO fields ({', '.join(duplicate)}) "
                f"VALUES ({', '.join('?' * len(duplicate))})",
                list(duplicate.values()),
            )
        # an identity is unique per tenant whatever profile claims it
        identity = conn.execute(
            "SELECT channel, channel_user_id FROM channel_identities WHERE tenant_id = ?",
            (str(tenant),),
        ).fetchone()
        other = str(uuid4())
        conn.execute(
            "INSERT INTO profiles VALUES (?, ?, ?, 'unverified', ?, ?, NULL, NULL)",
            (str(tenant), other, str(uuid4()), NOW, NOW),
        )
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO channel_identities VALUES (?, ?, ?, ?, 0, 0, NULL, 0, ?)",
                (str(tenant), *identity, other, NOW),
            )
    conn.close()


def test_every_key_leads_with_tenant_id(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        asyncio.run(_migrate_file(path))
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                f"AND name != '{VERSION_TABLE}'"
            )
        ]
        assert len(tables) == 9  # OWN_TABLES
        for table in tables:
            for index in conn.execute(f"PRAGMA index_list({table})").fetchall():
                name = index[1]
                first = conn.execute(f"PRAGMA index_xinfo({name})").fetchone()
                assert first[2] == "tenant_id", f"{table}.{name} does not lead with tenant_id"
    finally:
        conn.close()


async def _migrate_file(path: Path) -> None:
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await migrate(conn, NOW)


# ---------------------------------------------------------------------------------------
# migrations are an explicit step: opening never changes the schema
# ---------------------------------------------------------------------------------------


def tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    return [r[0] for r in rows]


async def test_opening_a_missing_file_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "vault.db"
    with pytest.raises(errors.SchemaNotReadyError, match=r"has not been created.*ccvault migrate"):
        async with SqliteProfileStore(path=path):
            pass
    assert not (tmp_path / "sub").exists()


async def test_opening_an_empty_database_is_refused_and_creates_no_table(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    sqlite3.connect(path).close()  # an empty SQLite file, as an operator may have made it
    before = fingerprint(path)
    with pytest.raises(errors.SchemaNotReadyError) as caught:
        async with SqliteProfileStore(path=path):
            pass
    assert "ccvault migrate" in str(caught.value)
    assert caught.value.__class__.__mro__[1] is errors.ConfigurationError
    assert tables(path) == [] and fingerprint(path) == before and sidecars(path) == []


async def test_status_and_dry_run_read_only(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    store = SqliteProfileStore(path=path)
    status = await store.schema_status()
    assert (status.current, status.latest) == (0, LATEST_VERSION)
    assert [s.version for s in status.pending] == [m.version for m in MIGRATIONS]
    dry = await store.migrate(dry_run=True)
    assert dry.dry_run and dry.applied == status.pending
    assert any("CREATE TABLE" in sql for step in dry.applied for sql in step.statements)
    assert not path.exists()  # neither status nor the dry run created the file
    assert [s.version for s in (await store.migrate()).applied] == [m.version for m in MIGRATIONS]
    again = await store.migrate()
    assert again.applied == () and again.status.up_to_date
    assert (await store.schema_status()).pending == ()
    assert (await store.migrate(dry_run=True)).applied == ()


async def test_migrate_on_start_migrates_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    async with SqliteProfileStore(SqliteSettings(path=str(path), migrate_on_start=True)) as store:
        assert (await store.schema_status()).up_to_date
    assert versions(path) == [m.version for m in MIGRATIONS]


async def test_migrate_on_an_open_store_is_a_no_op_when_up_to_date(db: Path) -> None:
    async with SqliteProfileStore(path=db) as store:
        report = await store.migrate()
        assert report.applied == () and report.status.up_to_date
