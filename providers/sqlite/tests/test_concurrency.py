"""Concurrent writers: one store, two stores on one file, other processes, a held lock."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
import time
from pathlib import Path
from uuid import uuid4

import pytest

from ccvault import errors
from ccvault.models import Channel, ProfileField
from ccvault_contract_tests.helpers import assert_unbroken_chain
from ccvault_sqlite import SqliteProfileStore, SqliteSettings


async def wait_for(condition: object, what: str, within: float = 10.0) -> None:
    """Poll ``condition()`` until true, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def test_concurrent_writers_through_one_store(db: Path) -> None:
    async with SqliteProfileStore(path=db) as store:
        tenant = uuid4()
        profile = await store.get_or_create(tenant, Channel.SMS, "+15550200")
        await asyncio.gather(
            *(
                store.update_field(tenant, profile.id, ProfileField(name="score", value=i))
                for i in range(60)
            )
        )
        history = await store.get_field_history(tenant, profile.id, "score")
        assert len(history) == 60
        assert_unbroken_chain(history)


async def test_concurrent_writers_through_two_stores_on_one_file(db: Path) -> None:
    path = db
    tenant = uuid4()
    async with SqliteProfileStore(path=path) as one, SqliteProfileStore(path=path) as two:
        profiles = await asyncio.gather(
            *(s.get_or_create(tenant, Channel.WHATSAPP, "+15550201") for s in (one, two) * 5)
        )
        assert len({p.id for p in profiles}) == 1
        profile_id = profiles[0].id
        await asyncio.gather(
            *(
                store.update_field(tenant, profile_id, ProfileField(name="city", value=f"c{i}"))
                for i in range(30)
                for store in (one, two)
            )
        )
        for store in (one, two):
            history = await store.get_field_history(tenant, profile_id, "city")
            assert len(history) == 60
            assert_unbroken_chain(history)


_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from uuid import UUID
    from ccvault.models import Channel, ProfileField
    from ccvault_sqlite import SqliteProfileStore

    async def main(path, tenant, worker):
        await SqliteProfileStore(path=path).migrate()
        async with SqliteProfileStore(path=path) as store:
            profile = await store.get_or_create(UUID(tenant), Channel.SMS, "+15550202")
            for i in range(15):
                await store.update_field(
                    UUID(tenant), profile.id, ProfileField(name="note", value=f"{worker}-{i}")
                )
            print(profile.id)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
    """
)


async def test_processes_starting_at_once_on_a_new_file(tmp_path: Path) -> None:
    """Three processes migrate (the explicit step), open and write the same file at the
    same time."""
    path = tmp_path / "shared.db"
    tenant = uuid4()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            str(path),
            str(tenant),
            str(n),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for n in range(3)
    ]
    outputs = [await asyncio.wait_for(p.communicate(), timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    assert len({out.strip() for out, _ in outputs}) == 1  # one profile for the identity
    async with SqliteProfileStore(path=path) as store:
        found = await store.get_by_channel_identity(tenant, Channel.SMS, "+15550202")
        assert found is not None
        history = await store.get_field_history(tenant, found.id, "note")
        assert len(history) == 45
        assert_unbroken_chain(history)


async def test_a_held_lock_is_waited_out_with_back_off(db: Path) -> None:
    path = db
    settings = SqliteSettings(
        path=str(path),
        busy_timeout_ms=10,
        lock_retry_attempts=1000,
        lock_retry_initial_ms=2,
        lock_retry_max_ms=20,
    )
    async with SqliteProfileStore(settings) as store:
        tenant = uuid4()
        profile = await store.get_or_create(tenant, Channel.SMS, "+15550203")
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
            write = asyncio.create_task(
                store.update_field(tenant, profile.id, ProfileField(name="email", value="a@x"))
            )
            await wait_for(lambda: store.lock_retries >= 3, "the store to retry")
            assert not write.done()
            blocker.execute("COMMIT")
            field_id = await asyncio.wait_for(write, timeout=30)
        finally:
            blocker.close()
        found = await store.get_field(tenant, profile.id, "email")
        assert found is not None and found.id == field_id


async def test_a_lock_held_past_every_retry_is_unavailable_and_writes_nothing(
    db: Path,
) -> None:
    path = db
    settings = SqliteSettings(
        path=str(path), busy_timeout_ms=5, lock_retry_attempts=3, lock_retry_initial_ms=1
    )
    async with SqliteProfileStore(settings) as store:
        tenant = uuid4()
        profile = await store.get_or_create(tenant, Channel.SMS, "+15550204")
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(errors.ProviderUnavailableError, match="locked"):
                await store.update_field(tenant, profile.id, ProfileField(name="email", value="a"))
            assert store.lock_retries == 2
            # reads are not blocked by a writer (WAL)
            assert await store.get_by_id(tenant, profile.id) is not None
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await store.get_field(tenant, profile.id, "email") is None
        # the store is healthy afterwards
        await store.update_field(tenant, profile.id, ProfileField(name="email", value="b"))
        assert (await store.count_items_by_status(tenant))["fields"]["active"] == 1
