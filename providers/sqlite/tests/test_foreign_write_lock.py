"""Another process holding SQLite's write lock does not stall plain reads (issue 12).

A subprocess (plain ``sqlite3``) opens the same file, takes the write lock with
``BEGIN IMMEDIATE``, writes without committing, says so through its stdout pipe, and keeps
the lock until its stdin says release. Meanwhile the store's reads must complete (WAL:
readers never need the write lock) and return the last committed state, even while a
write of the same store waits for the lock; that write fails with
:class:`~ccvault.errors.ProviderUnavailableError` once ``busy_timeout`` and its retries are
spent, or succeeds once the lock is released.

``asyncio.wait_for(..., HANG_GUARD)`` only turns a hang into a failure; nothing here
measures time.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ProfileField,
    ScenarioFieldRequirement,
)
from ccvault_sqlite import SqliteProfileStore, SqliteSettings

HANG_GUARD = 30.0

_HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE fields SET value = '\"uncommitted\"'")
conn.execute("UPDATE profiles SET verification_level = 'uncommitted'")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
print("released", flush=True)
"""


class LockHolder:
    """The subprocess holding the write lock, driven through its pipes."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def wait_locked(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == "locked", f"the lock holder did not start: {line!r}"

    def release(self) -> None:
        if self.process.poll() is not None:
            return
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("release\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "released"
        self.process.wait(timeout=HANG_GUARD)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=HANG_GUARD)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "vault.db"


@pytest.fixture
async def store(database: Path) -> AsyncIterator[SqliteProfileStore]:
    # short lock waits, so that the write refused while the lock is held fails quickly
    settings = SqliteSettings(
        path=str(database),
        migrate_on_start=True,
        busy_timeout_ms=200,
        lock_retry_attempts=2,
        lock_retry_initial_ms=1,
    )
    async with SqliteProfileStore(settings) as s:
        yield s


@pytest.fixture
def holder(database: Path) -> Iterator[Any]:
    started: list[LockHolder] = []

    def start() -> LockHolder:
        lock = LockHolder(database)
        started.append(lock)
        lock.wait_locked()
        return lock

    yield start
    for lock in started:
        lock.stop()


async def watch_begin(store: SqliteProfileStore) -> threading.Event:
    """An event set when the store's write connection starts a ``BEGIN IMMEDIATE``: the
    write is then inside SQLite, waiting for the lock the other process holds. (Installed
    before the write starts: the connection's thread is busy while the write waits.)"""
    begun = threading.Event()

    def trace(sql: str) -> None:
        if sql.startswith("BEGIN IMMEDIATE"):
            begun.set()

    await store.connection.set_trace_callback(trace)
    return begun


async def waiting(begun: threading.Event) -> None:
    assert await asyncio.to_thread(begun.wait, HANG_GUARD), "the write never began"


async def committed(store: SqliteProfileStore) -> tuple[UUID, UUID, UUID, UUID]:
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "visitor-1")
    await store.update_field(tenant, profile.id, ProfileField(name="email", value="a@example.org"))
    await store.save_scenario_requirement(
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="email"
        )
    )
    await store.save_scenario_requirement(
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="phone"
        )
    )
    return tenant, profile.id, scenario, profile.customer_id


async def assert_reads_see_committed_state(
    store: SqliteProfileStore, tenant: UUID, profile_id: UUID, scenario: UUID, customer: UUID
) -> None:
    profile = await asyncio.wait_for(store.get_by_id(tenant, profile_id), HANG_GUARD)
    assert profile is not None
    assert profile.fields["email"].value == "a@example.org"
    assert profile.verification_level.value == "unverified"
    by_customer = await asyncio.wait_for(store.get_by_customer_id(tenant, customer), HANG_GUARD)
    assert by_customer is not None and by_customer.id == profile_id
    item = await asyncio.wait_for(store.get_field(tenant, profile_id, "email"), HANG_GUARD)
    assert item is not None and item.value == "a@example.org"
    history = await asyncio.wait_for(
        store.get_field_history(tenant, profile_id, "email"), HANG_GUARD
    )
    assert [v.value for v in history] == ["a@example.org"]
    missing = await asyncio.wait_for(
        store.get_missing_fields(tenant, profile, scenario), HANG_GUARD
    )
    assert [m.field_name for m in missing] == ["phone"]


async def test_reads_complete_while_another_process_holds_the_write_lock(
    store: SqliteProfileStore, holder: Any
) -> None:
    tenant, profile_id, scenario, customer = await committed(store)
    lock = holder()
    await assert_reads_see_committed_state(store, tenant, profile_id, scenario, customer)
    lock.release()


async def test_reads_are_not_queued_behind_a_write_waiting_for_the_lock(
    store: SqliteProfileStore, holder: Any
) -> None:
    """The store's own write waits for the other process's lock; its reads go on."""
    tenant, profile_id, scenario, customer = await committed(store)
    lock = holder()
    begun = await watch_begin(store)
    # a write of this store that must wait for the lock: it stays blocked (busy_timeout,
    # then back-off) while the reads below run
    write = asyncio.create_task(
        store.update_field(tenant, profile_id, ProfileField(name="phone", value="+1555"))
    )
    await waiting(begun)
    await assert_reads_see_committed_state(store, tenant, profile_id, scenario, customer)
    with pytest.raises(errors.ProviderUnavailableError, match="locked"):
        await asyncio.wait_for(write, HANG_GUARD)
    lock.release()
    # the refused write left nothing behind; once the lock is gone the same write succeeds
    assert await store.get_field(tenant, profile_id, "phone") is None
    await asyncio.wait_for(
        store.update_field(tenant, profile_id, ProfileField(name="phone", value="+1555")),
        HANG_GUARD,
    )
    stored = await store.get_field(tenant, profile_id, "phone")
    assert stored is not None and stored.value == "+1555"


async def test_a_write_waiting_for_the_lock_succeeds_once_it_is_released(
    database: Path, holder: Any
) -> None:
    settings = SqliteSettings(
        path=str(database), migrate_on_start=True, busy_timeout_ms=int(HANG_GUARD * 1000)
    )
    async with SqliteProfileStore(settings) as store:
        tenant, profile_id, scenario, customer = await committed(store)
        lock = holder()
        begun = await watch_begin(store)
        write = asyncio.create_task(
            store.update_field(tenant, profile_id, ProfileField(name="phone", value="+1555"))
        )
        await waiting(begun)
        await assert_reads_see_committed_state(store, tenant, profile_id, scenario, customer)
        assert not write.done()
        lock.release()
        await asyncio.wait_for(write, HANG_GUARD)
        stored = await store.get_field(tenant, profile_id, "phone")
        assert stored is not None and stored.value == "+1555"


async def test_a_store_opens_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    """``PRAGMA optimize=0x10002`` at open does not wait (busy_timeout 0 meanwhile)."""
    database = tmp_path / "vault.db"
    settings = SqliteSettings(
        path=str(database), migrate_on_start=True, busy_timeout_ms=int(HANG_GUARD * 1000)
    )
    async with SqliteProfileStore(settings) as first:
        tenant = uuid4()
        profile = await first.get_or_create(tenant, Channel.WEB, "visitor")
    lock = LockHolder(database)
    try:
        lock.wait_locked()
        reopened = SqliteProfileStore(settings.model_copy(update={"migrate_on_start": False}))
        await asyncio.wait_for(reopened.setup(), HANG_GUARD)
        try:
            found = await asyncio.wait_for(reopened.get_by_id(tenant, profile.id), HANG_GUARD)
            assert found is not None
        finally:
            lock.release()
            await reopened.aclose()
    finally:
        lock.stop()
