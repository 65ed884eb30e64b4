"""The near tier with pushed invalidations (``[redis] near_cache_invalidation = "push"``).

Redis client tracking (BCAST, one dedicated connection) tells the cache about every change of
a tenant's generation key; a near copy is then served with no Redis command at all while
that connection is healthy and nothing of the tenant was invalidated since the copy's
generation was read. These tests check that a push-mode near hit really makes no command;
that a write on another instance is seen once ``sync_invalidations()`` returned (no sleeps:
it waits for the answer to a PING on the tracking connection); that this process's own
writes end its copies at once; that an invalidation processed between the read of the
generation and the store of the copy is not lost; that a killed tracking connection makes
every read fall back to the GET check (never stale) and then recovers; that FLUSHALL ends
every copy; that the setting is parsed and checked; and that closing leaves no task behind.
Then the review's cases: a failover behind the same address (the tracking connection left on
the old server), the end of the tracking connection read before its task noticed, a key
prefix with glob characters (clearing every epoch), a client encoding other than UTF-8, the
back-off of both background loops with retry_after = 0, a purge on another instance, the
memory cap of per-tenant invalidations, a Redis restart from a snapshot, and a store used on
a second event loop.
Shared Redis on 6379 under a prefix of its own (only our own connection is ever killed); the
FLUSHALL, failover and restart tests run private redis-servers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from redis.asyncio import Redis

import ccvault
from ccvault import errors
from ccvault.cache import CachedProfileStore, sync_invalidations
from ccvault.models import Channel, CustomerProfile, ItemType
from ccvault.store import ForwardingProfileStore
from ccvault_contract_tests.helpers import make_field, unique_user
from ccvault_inmemory import InMemoryProfileStore


def _helpers() -> ModuleType:
    name = "ccvault_cache_test_redis_servers"  # the name the other cache tests use
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("redis_servers.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


H = _helpers()
REDIS_URL = H.SHARED_URL
LOOKUPS = H.LOOKUPS

Read = Callable[[CachedProfileStore], Awaitable[CustomerProfile | None]]


reader = H.reader


class Commands:
    """Counts every command a store sends through its Redis client."""

    def __init__(self, store: CachedProfileStore) -> None:
        self.count = 0
        real = store.redis.execute_command

        async def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await real(*args, **kwargs)

        store.redis.execute_command = counting


def push_store(backend: Any, prefix: str, **options: Any) -> CachedProfileStore:
    """A push-mode store on the shared Redis."""
    return push_client_store(backend, REDIS_URL, prefix, **options)


def push_client_store(backend: Any, url: str, prefix: str, **options: Any) -> CachedProfileStore:
    """A push-mode store with a client of its own on ``url`` (``client_options``: the
    client's)."""
    client_options = options.pop("client_options", {})
    return CachedProfileStore(
        backend,
        Redis.from_url(url, **client_options),
        key_prefix=prefix,
        near_cache_invalidation="push",
        close_client=True,
        **options,
    )


prefix = H.prefix
backend = H.backend


@pytest.fixture
async def pair(backend: Any, prefix: str) -> AsyncIterator[tuple[Any, Any]]:
    """Two push-mode instances (each its own Redis client) over one backend: two vault
    processes."""
    one = push_store(backend, prefix, retry_after=0.05)
    two = push_store(backend, prefix, retry_after=0.05)
    async with one, two:
        yield one, two


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (bounded) until it holds; fail with ``what`` after 15 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


def moved(store: CachedProfileStore, session: int) -> bool:
    """Whether ``store`` runs a healthy tracking session newer than ``session``."""
    return store._track_session != session and store.tracking_healthy


async def tracking(store: CachedProfileStore) -> None:
    """Wait (polling, bounded) until the store's tracking connection is up."""
    store._start_tracking()
    await until(lambda: store.tracking_healthy, "the tracking connection never came up")


async def trusted(store: CachedProfileStore, read: Read) -> CustomerProfile:
    """Read until the near copy is served without any Redis command; return it."""
    await tracking(store)
    for _ in range(3):
        await read(store)
    commands = Commands(store)
    found = await read(store)
    assert found is not None
    assert commands.count == 0, "the near copy is not trusted"
    return found


async def profile_with_email(store: CachedProfileStore, value: str) -> CustomerProfile:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, unique_user())
    await store.update_field(tenant, profile.id, make_field("email", value))
    loaded = await store.get_by_id(tenant, profile.id)
    assert loaded is not None
    return loaded


def email(found: CustomerProfile | None) -> Any:
    assert found is not None
    return found.fields["email"].value


async def trusted_profile(
    store: CachedProfileStore, lookup: str = "get_by_id"
) -> tuple[CustomerProfile, Read]:
    """A new profile (email old@example.com) and its read through ``lookup``, whose near
    copy ``store`` now serves without any Redis command."""
    profile = await profile_with_email(store, "old@example.com")
    read = reader(lookup, profile)
    await trusted(store, read)
    return profile, read


@pytest.mark.parametrize("lookup", LOOKUPS)
async def test_a_push_mode_near_hit_makes_no_redis_command(
    pair: tuple[Any, Any], backend: Any, lookup: str
) -> None:
    one, _ = pair
    profile, read = await trusted_profile(one, lookup)
    commands = Commands(one)
    backend.reads.clear()
    for _ in range(5):
        assert await read(one) == profile
    assert commands.count == 0
    assert not backend.reads


async def test_a_healthy_session_survives_its_own_heartbeats_and_syncs(
    pair: tuple[Any, Any],
) -> None:
    """The heartbeat's server check (SET of the session marker, reading the old value back)
    and sync_invalidations() keep a healthy session: before, redis-py's SET callback turned
    the old value into True, every check read "the database changed", and push mode fell
    back to the GET check about once a second."""
    one, _ = pair
    profile, read = await trusted_profile(one)
    session = one._track_session
    for _ in range(3):
        await one._check_same_server()
        await one.sync_invalidations()
    assert one.tracking_healthy
    assert one._track_session == session
    commands = Commands(one)
    assert await read(one) == profile
    assert commands.count == 0


async def test_check_mode_still_checks_the_generation_on_every_near_hit(
    backend: Any, prefix: str
) -> None:
    store = CachedProfileStore(backend, Redis.from_url(REDIS_URL), key_prefix=prefix)
    async with store:
        profile = await profile_with_email(store, "old@example.com")
        read = reader("get_by_id", profile)
        for _ in range(3):
            await read(store)
        await store.sync_invalidations()  # a no-op in check mode
        commands = Commands(store)
        assert await read(store) == profile
        assert commands.count == 1  # the GET of the generation
        assert store._track_task is None  # no tracking connection in check mode
    await store.redis.aclose()


@pytest.mark.parametrize("lookup", LOOKUPS)
async def test_a_write_on_another_instance_is_seen_once_synced(
    pair: tuple[Any, Any], lookup: str
) -> None:
    one, two = pair
    profile, read = await trusted_profile(one, lookup)
    await two.update_field(profile.tenant_id, profile.id, make_field("email", "new@example.com"))
    await one.sync_invalidations()
    assert email(await read(one)) == "new@example.com"


async def test_sync_invalidations_reaches_the_cache_under_wrappers(pair: tuple[Any, Any]) -> None:
    """open_store yields encryption over the cache: ccvault.cache.sync_invalidations(store)
    finds the cache through the wrappers' ``inner`` (and is a no-op without a cache)."""
    one, two = pair
    profile, read = await trusted_profile(one)
    outer = ForwardingProfileStore(ForwardingProfileStore(one))
    await two.update_field(profile.tenant_id, profile.id, make_field("email", "new@example.com"))
    await sync_invalidations(outer)
    assert email(await read(outer)) == "new@example.com"
    await sync_invalidations(InMemoryProfileStore())  # nothing to sync: no error


async def test_a_tenant_wide_write_on_another_instance_is_seen_once_synced(
    pair: tuple[Any, Any],
) -> None:
    one, two = pair
    profile, read = await trusted_profile(one)
    # delete_item does not name the profile: every body of the tenant goes
    item = profile.fields["email"].id
    assert await two.delete_item(profile.tenant_id, item, ItemType.PROFILE_FIELD)
    await one.sync_invalidations()
    found = await read(one)
    assert found is not None and "email" not in found.fields


@pytest.mark.parametrize("tenant_wide", [False, True])
async def test_a_write_of_this_instance_ends_its_near_copy_at_once(
    pair: tuple[Any, Any], tenant_wide: bool
) -> None:
    one, _ = pair
    profile, read = await trusted_profile(one)
    if tenant_wide:
        item = profile.fields["email"].id
        assert await one.delete_item(profile.tenant_id, item, ItemType.PROFILE_FIELD)
        found = await read(one)  # no sync: this process's write is seen at once
        assert found is not None and "email" not in found.fields
    else:
        await one.update_field(
            profile.tenant_id, profile.id, make_field("email", "new@example.com")
        )
        assert email(await read(one)) == "new@example.com"


async def test_a_read_racing_a_write_of_this_instance_keeps_no_trusted_copy(
    pair: tuple[Any, Any],
) -> None:
    """A read of this process that reads the old generation while its own write is being
    invalidated: once the write returned, that copy is not served, without waiting for the
    pushed message (message handling is switched off here)."""
    one, _ = pair
    profile, read = await trusted_profile(one)
    one._on_invalidate = lambda keys: None
    real_delete = one.redis.delete
    raced: list[CustomerProfile | None] = []

    async def read_then_delete(*keys: Any) -> Any:
        if not raced:
            raced.append(await read(one))  # before the DEL: the old generation and body
        return await real_delete(*keys)

    one.redis.delete = read_then_delete
    await one.update_field(profile.tenant_id, profile.id, make_field("email", "new@example.com"))
    assert email(raced[0]) == "old@example.com" and one._near, "no copy was stored"
    assert email(await read(one)) == "new@example.com"


async def test_an_invalidation_between_the_generation_read_and_the_copy_is_not_lost(
    pair: tuple[Any, Any],
) -> None:
    one, two = pair
    profile = await profile_with_email(one, "old@example.com")
    read = reader("get_by_id", profile)
    assert email(await read(two)) == "old@example.com"  # the body is in Redis
    one._near.clear()
    await tracking(one)
    real_mget = one.redis.mget
    raced = False

    async def mget_then_write(*args: Any, **kwargs: Any) -> Any:
        nonlocal raced
        answer = await real_mget(*args, **kwargs)  # the old generation and body
        if not raced:
            raced = True
            # another instance writes, and its invalidation is processed here, after the
            # generation was read and before the copy is stored
            await two.update_field(
                profile.tenant_id, profile.id, make_field("email", "new@example.com")
            )
            await one.sync_invalidations()
        return answer

    one.redis.mget = mget_then_write
    # the read began before the write completed: the old value is a correct answer
    assert email(await read(one)) == "old@example.com"
    assert raced and one._near, "the copy was not stored"
    one.redis.mget = real_mget
    commands = Commands(one)
    assert email(await read(one)) == "new@example.com"
    assert commands.count > 0, "the copy read before the invalidation was trusted"


async def test_a_killed_tracking_connection_falls_back_to_the_check_then_recovers(
    pair: tuple[Any, Any],
) -> None:
    one, two = pair
    profile, read = await trusted_profile(one)
    killed = one.tracking_client_id
    assert killed is not None
    admin = Redis.from_url(REDIS_URL)
    try:
        # only our own connection: the invalidation of the write below is never delivered
        assert await admin.client_kill_filter(_id=str(killed)) == 1
        await two.update_field(
            profile.tenant_id, profile.id, make_field("email", "new@example.com")
        )
        await one.sync_invalidations()  # cannot be answered: the connection is marked lost
        assert not one.tracking_healthy or one.tracking_client_id != killed
        commands = Commands(one)
        assert email(await read(one)) == "new@example.com"
        assert commands.count > 0
        # reconnected in the background: trusted again, and invalidations arrive again
        await tracking(one)
        assert one.tracking_client_id != killed
        await trusted(one, read)
        await two.update_field(
            profile.tenant_id, profile.id, make_field("email", "newer@example.com")
        )
        await one.sync_invalidations()
        assert email(await read(one)) == "newer@example.com"
    finally:
        await admin.aclose()


async def test_reads_never_wait_for_a_tracking_connection_that_cannot_be_made(
    backend: Any, prefix: str
) -> None:
    """The tracking connection cannot be opened (simulated: opening it fails, as when Redis
    refuses CLIENT TRACKING): reads are served at once, near copies with the GET check."""
    store = push_store(backend, prefix, retry_after=0.05)

    async def refused() -> Any:
        raise OSError("refused")

    store._track_open = refused  # type: ignore[method-assign]
    async with store:
        profile = await profile_with_email(store, "old@example.com")
        read = reader("get_by_id", profile)
        for _ in range(3):
            assert await read(store) == profile
        await store.sync_invalidations()
        assert not store.tracking_healthy
        commands = Commands(store)
        assert await read(store) == profile
        assert commands.count == 1  # the GET of the generation: never trusted blindly
        task = store._track_task
        assert task is not None and not task.done()  # still retrying, in the background
    assert task.done()


async def test_flushall_ends_every_near_copy(tmp_path: Path, backend: Any) -> None:
    server = H.RedisServer(tmp_path / "redis")
    server.start()
    try:
        settings = ccvault.load_settings(
            store_provider="inmemory",
            redis={
                "url": server.url,
                "key_prefix": "t:",
                "retry_after_seconds": 0.05,
                "near_cache_invalidation": "push",
            },
        )
        async with CachedProfileStore.from_settings(backend, settings) as store:
            assert store.near_cache_invalidation == "push"
            profile, read = await trusted_profile(store)
            with server.client() as raw:
                raw.flushall()
            await store.sync_invalidations()
            assert not store._near
            backend.reads.clear()
            assert await read(store) == profile
            assert sum(backend.reads.values()) == 1, "a flushed near copy was served"
    finally:
        server.stop()


async def test_closing_leaves_no_task_behind(backend: Any, prefix: str) -> None:
    store = push_store(backend, prefix)
    async with store:
        profile = await profile_with_email(store, "old@example.com")
        await trusted(store, reader("get_by_id", profile))
        assert store._track_task is not None
    assert store._track_task is None
    assert not store.tracking_healthy
    current = asyncio.current_task()
    left = [
        task
        for task in asyncio.all_tasks()
        if task is not current and "_track" in repr(task.get_coro())
    ]
    assert not left


def test_the_setting_is_parsed_and_checked() -> None:
    assert ccvault.load_settings().redis.near_cache_invalidation == "check"
    settings = ccvault.load_settings(redis={"near_cache_invalidation": "push"})
    assert settings.redis.near_cache_invalidation == "push"
    with pytest.raises(errors.ConfigurationError, match=r"redis\.near_cache_invalidation"):
        ccvault.load_settings(redis={"near_cache_invalidation": "sometimes"})
    with pytest.raises(errors.ConfigurationError, match="near_cache_invalidation"):
        CachedProfileStore(InMemoryProfileStore(), Redis(), near_cache_invalidation="sometimes")


# =========================================================================================
# review: ways a push-mode near hit could be stale, and resource problems
# =========================================================================================


async def failover(store: CachedProfileStore, to: Any) -> None:
    """The address of Redis now leads to another server (a failover behind a DNS name, a
    virtual IP or a proxy): the pool's connections are closed and reopen to ``to``; the
    tracking connection stays open to the old server, which still answers its PINGs but
    never hears of the new server's writes."""
    pool = store.redis.connection_pool
    pool.connection_kwargs["port"] = to.port
    await pool.disconnect()
    for connection in [*pool._available_connections, *pool._in_use_connections]:
        connection.port = to.port


@pytest.mark.parametrize("talks", [True, False])
async def test_a_tracking_connection_left_on_another_server_is_never_trusted(
    tmp_path: Path, backend: Any, talks: bool
) -> None:
    """Copies read from the new server are never trusted on the strength of a tracking
    connection open to the old one; and the heartbeat notices that the pool now reaches
    another server even when this process has no reason to talk to Redis (``talks``
    False: every read is a trusted near copy), and moves the tracking connection."""
    old, new = H.RedisServer(tmp_path / "old"), H.RedisServer(tmp_path / "new")
    old.start()
    new.start()
    try:
        one = push_client_store(backend, old.url, "t:", retry_after=0.05)
        two = push_client_store(backend, new.url, "t:", retry_after=0.05)
        async with one, two:
            profile, read = await trusted_profile(one)
            session = one._track_session
            await failover(one, new)
            if talks:
                assert await one.get_by_id(uuid.uuid4(), uuid.uuid4()) is None  # via Redis
                for _ in range(3):
                    assert email(await read(one)) == "old@example.com"
            else:
                await until(lambda: moved(one, session), "the heartbeat never noticed")
            await two.update_field(
                profile.tenant_id, profile.id, make_field("email", "new@example.com")
            )
            await one.sync_invalidations()
            assert email(await read(one)) == "new@example.com"
    finally:
        old.stop()
        new.stop()


async def test_a_read_after_the_tracking_connection_end_was_read_trusts_no_copy(
    pair: tuple[Any, Any],
) -> None:
    """Once the reader has read the end of the tracking connection (its invalidations are
    lost from then on), no copy is served without the GET, even before the task keeping
    the connection has noticed."""
    one, two = pair
    profile, read = await trusted_profile(one)
    killed = one.tracking_client_id
    admin = Redis.from_url(REDIS_URL)
    try:
        # a write whose invalidation is lost with the connection
        one._on_invalidate = lambda keys: None
        await two.update_field(
            profile.tenant_id, profile.id, make_field("email", "new@example.com")
        )
        assert await admin.client_kill_filter(_id=str(killed)) == 1
        ended = one._track_reader
        assert ended is not None
        await asyncio.wait([ended])
        assert not one.tracking_healthy
        assert email(await read(one)) == "new@example.com"
    finally:
        await admin.aclose()


async def test_clearing_every_epoch_works_with_a_glob_special_key_prefix(backend: Any) -> None:
    """Recovery with too many poisoned tenants deletes every epoch key under the prefix by a
    SCAN pattern: characters of the prefix that are special in a pattern must be escaped,
    else it clears nothing (or another prefix's keys) and stale entries stay in use."""
    prefix = f"ccvault-test:[{uuid.uuid4().hex}]*?\\:"
    one = push_store(backend, prefix, retry_after=0.05, max_dirty_tenants=0)
    two = push_store(backend, prefix, retry_after=0.05)
    try:
        async with one, two:
            profile, read = await trusted_profile(two)
            # a write whose invalidation was lost (Redis unreachable from its process):
            # the backend changed, Redis was not told, the writer poisoned the tenant
            await backend.update_field(
                profile.tenant_id, profile.id, make_field("email", "new@example.com")
            )
            one._poison(profile.tenant_id)
            assert one._dirty_all  # more than max_dirty_tenants: every epoch goes
            assert await one._recover()
            await two.sync_invalidations()
            assert email(await read(two)) == "new@example.com"
    finally:
        client = Redis.from_url(REDIS_URL)
        literal = "".join("\\" + c if c in "\\*?[]" else c for c in prefix)
        keys = [k async for k in client.scan_iter(match=f"{literal}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_pushed_invalidations_match_keys_in_the_clients_encoding(
    backend: Any, prefix: str
) -> None:
    """A client configured with another encoding than UTF-8 and a key prefix outside ASCII:
    the generation keys pushed by Redis must still be recognised as the tenant's."""
    latin = f"{prefix}\u00e9:"
    options = {"client_options": {"encoding": "latin-1"}, "retry_after": 0.05}
    one = push_client_store(backend, REDIS_URL, latin, **options)
    two = push_client_store(backend, REDIS_URL, latin, **options)
    async with one, two:
        profile, read = await trusted_profile(one)
        await two.update_field(
            profile.tenant_id, profile.id, make_field("email", "new@example.com")
        )
        await one.sync_invalidations()
        assert email(await read(one)) == "new@example.com"


class Sleeps:
    """Records the pauses one background task takes (the real sleep still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, task: Callable[[], Any]) -> None:
        self.delays: list[float] = []
        real = asyncio.sleep

        async def recording(delay: float, *args: Any, **kwargs: Any) -> Any:
            if asyncio.current_task() is task():
                self.delays.append(delay)
            return await real(delay, *args, **kwargs)

        monkeypatch.setattr(asyncio, "sleep", recording)

    async def until(self, count: int) -> list[float]:
        await until(lambda: len(self.delays) >= count, f"fewer than {count} pauses")
        return self.delays[:count]


async def test_the_retry_of_pending_invalidations_never_spins(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """retry_after_seconds = 0 is a valid setting ("probe Redis on every call"): the
    background retry must still pause between attempts while Redis is down, not loop on
    connection attempts at full speed."""
    dead = f"redis://127.0.0.1:{H.free_port()}/0"
    store = push_client_store(backend, dead, "t:", retry_after=0.0)
    sleeps = Sleeps(monkeypatch, lambda: store._retry_task)
    async with store:
        store._poison(uuid.uuid4())
        delays = await sleeps.until(6)
        assert all(delay > 0 for delay in delays), delays


async def test_the_tracking_reconnect_never_spins(
    backend: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = push_store(backend, prefix, retry_after=0.0, max_retry_interval=0.0)

    async def refused() -> Any:
        raise OSError("refused")

    store._track_open = refused  # type: ignore[method-assign]
    sleeps = Sleeps(monkeypatch, lambda: store._track_task)
    async with store:
        store._start_tracking()
        delays = await sleeps.until(6)
        assert all(delay > 0 for delay in delays), delays


async def test_a_profile_purged_on_another_instance_is_never_served_once_synced(
    pair: tuple[Any, Any],
) -> None:
    one, two = pair
    profile = await profile_with_email(one, "old@example.com")
    reads = [reader(lookup, profile) for lookup in LOOKUPS]
    for read in reads:
        await trusted(one, read)
    await two.purge_profile(profile.tenant_id, profile.id)
    await one.sync_invalidations()
    for read in reads:
        assert await read(one) is None


async def test_forgotten_invalidations_never_make_an_old_copy_trusted(
    pair: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the memory of per-tenant invalidations, a forgotten tenant reports the common
    floor, which is never below its own last invalidation."""
    monkeypatch.setattr("ccvault.cache._INVALIDATION_MEMORY", 2)
    one, two = pair
    profile = await profile_with_email(one, "old@example.com")
    read = reader("get_by_id", profile)
    gen_key = one._gen_key(profile.tenant_id)

    def forget() -> None:
        for _ in range(3):  # other tenants' invalidations push this one out of memory
            one._bump(one._gen_key(uuid.uuid4()))
        assert gen_key not in one._invalidated

    await trusted(one, read)
    forget()  # nothing of the tenant happened: the copy may stay trusted (by the floor)
    await trusted(one, read)
    await two.update_field(profile.tenant_id, profile.id, make_field("email", "new@example.com"))
    await one.sync_invalidations()
    forget()
    assert email(await read(one)) == "new@example.com"


async def test_a_copy_from_before_a_redis_restart_is_never_trusted(
    tmp_path: Path, backend: Any
) -> None:
    """Redis restarts from a snapshot taken before a write whose invalidation was lost (its
    writer could not reach Redis): the restored generation equals the one a near copy
    holds, but carries the old server's run tag."""
    server = H.RedisServer(tmp_path / "redis")
    server.start()
    try:
        one = push_client_store(backend, server.url, "t:", retry_after=0.05)
        async with one:
            profile, read = await trusted_profile(one)
            session = one._track_session
            server.shutdown_save()
            await backend.update_field(
                profile.tenant_id, profile.id, make_field("email", "new@example.com")
            )
            server.start()
            await until(lambda: moved(one, session), "the tracking connection never came back")
            await one.sync_invalidations()
            for _ in range(3):
                assert email(await read(one)) == "new@example.com"
    finally:
        server.stop()


def test_a_store_used_on_another_event_loop_never_trusts_the_old_loops_copies(
    backend: Any, prefix: str
) -> None:
    """The tracking task runs on the loop that started it: once that loop has ended (a
    process running one loop per job with one store), nobody reads the pushed
    invalidations any more (a loop stopped, or closed, without cancelling its tasks: the
    task is never told). A read on a new loop must not trust a copy on their strength:
    it checks the generation (and, like ``"check"`` mode, fails loudly when the client
    cannot be used on this loop) — never the old data."""
    one = push_store(backend, prefix, retry_after=0.05)
    state: dict[str, Any] = {}

    async def first_job() -> None:
        profile = await profile_with_email(one, "old@example.com")
        await trusted(one, reader("get_by_id", profile))
        state["profile"] = profile

    async def second_job() -> None:
        profile = state["profile"]
        two = push_store(backend, prefix, retry_after=0.05)
        async with two:
            await two.update_field(
                profile.tenant_id, profile.id, make_field("email", "new@example.com")
            )
        try:
            found = await reader("get_by_id", profile)(one)
        except RuntimeError:  # the client's connections belong to the ended loop
            found = None
        assert found is None or email(found) == "new@example.com"
        task = one._track_task
        assert task is not None and task.get_loop() is asyncio.get_running_loop()
        try:
            await one.aclose()
        except RuntimeError:
            pass

    # the first loop stops without cancelling its tasks (asyncio.run would cancel them)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(first_job())
        asyncio.run(second_job())
    finally:

        async def end_first_loop() -> None:
            current = asyncio.current_task()
            left = [task for task in asyncio.all_tasks() if task is not current]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

        loop.run_until_complete(end_first_loop())
        loop.close()


def test_the_retry_of_pending_invalidations_follows_the_store_to_another_event_loop(
    backend: Any,
) -> None:
    """The background retry shares the tracking task's lifecycle: a retry task left on a
    loop that stopped without cancelling it never runs again, so a new one is started on
    the running loop, and closing there does not wait on the old loop's task."""
    dead = f"redis://127.0.0.1:{H.free_port()}/0"
    store = push_client_store(backend, dead, "t:", retry_after=0.05)

    async def first_job() -> asyncio.Task[None] | None:
        store._poison(uuid.uuid4())  # Redis unreachable: retried in the background
        return store._retry_task

    async def second_job() -> None:
        store._poison(uuid.uuid4())
        task = store._retry_task
        assert task is not None and task.get_loop() is asyncio.get_running_loop()
        await store.aclose()
        assert task.done()

    loop = asyncio.new_event_loop()
    old: asyncio.Task[None] | None = None
    try:
        old = loop.run_until_complete(first_job())
        assert old is not None and not old.done()
        asyncio.run(second_job())
    finally:
        if old is not None:
            old.cancel()
            loop.run_until_complete(asyncio.gather(old, return_exceptions=True))
        loop.close()


@pytest.mark.parametrize("synced", [True, False])
async def test_swapping_the_cache_database_is_noticed(
    tmp_path: Path, backend: Any, synced: bool
) -> None:
    """Redis pushes nothing for SWAPDB: the database this process reads is another one from
    then on, whose writes it was never told about. ``sync_invalidations`` (``synced``) and
    the heartbeat (else) notice it (a marker of the tracking session, kept in the database,
    is gone) and copies are checked again."""
    server = H.RedisServer(tmp_path / "redis")
    server.start()
    try:
        one = push_client_store(backend, server.url, "t:", retry_after=0.05)
        two = push_client_store(backend, server.url, "t:", retry_after=0.05)
        async with one, two:
            profile, read = await trusted_profile(one)
            session = one._track_session
            with server.client() as raw:
                raw.swapdb(0, 1)
            await two.update_field(
                profile.tenant_id, profile.id, make_field("email", "new@example.com")
            )
            if not synced:
                await until(
                    lambda: one._track_session != session, "the heartbeat never noticed the swap"
                )
            await one.sync_invalidations()
            assert email(await read(one)) == "new@example.com"
    finally:
        server.stop()


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of one series of ccvault's registry (0 before its first use)."""
    return ccvault.metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_metrics_follow_the_tracking_health_and_count_near_hits(
    backend: Any, prefix: str
) -> None:
    """ccvault_cache_tracking_up counts open caches whose pushed invalidations are healthy;
    a lost session (here a killed connection) counts in ccvault_cache_tracking_lost_total,
    closing does not; near hits are counted by how they were trusted."""
    up, lost = sample("ccvault_cache_tracking_up"), sample("ccvault_cache_tracking_lost_total")
    wanted = sample("ccvault_cache_tracking_wanted")
    pushed = {"check": "pushed"}
    store = push_store(backend, prefix, retry_after=0.05)
    admin = Redis.from_url(REDIS_URL)
    try:
        async with store:
            profile, read = await trusted_profile(store)
            assert sample("ccvault_cache_tracking_up") == up + 1
            assert sample("ccvault_cache_tracking_wanted") == wanted + 1
            hits = sample("ccvault_cache_near_hits_total", pushed)
            await read(store)
            assert sample("ccvault_cache_near_hits_total", pushed) == hits + 1
            killed = store.tracking_client_id
            assert await admin.client_kill_filter(_id=str(killed)) == 1
            await store.sync_invalidations()  # cannot be answered: the session is lost
            await until(
                lambda: sample("ccvault_cache_tracking_lost_total") == lost + 1,
                "the lost session was never counted",
            )
            await tracking(store)  # back: counted as up once more, not twice
            assert sample("ccvault_cache_tracking_up") == up + 1
            assert sample("ccvault_cache_tracking_wanted") == wanted + 1  # all along
        assert sample("ccvault_cache_tracking_up") == up  # closed: not up, and not lost
        assert sample("ccvault_cache_tracking_wanted") == wanted
        assert sample("ccvault_cache_tracking_lost_total") == lost + 1
    finally:
        await admin.aclose()
    checked = {"check": "checked"}
    plain = CachedProfileStore(backend, Redis.from_url(REDIS_URL), key_prefix=prefix)
    async with plain:
        assert sample("ccvault_cache_tracking_wanted") == wanted  # check mode: not wanted
        read = reader("get_by_id", profile)
        for _ in range(2):
            await read(plain)
        hits = sample("ccvault_cache_near_hits_total", checked)
        await read(plain)
        assert sample("ccvault_cache_near_hits_total", checked) == hits + 1
    await plain.redis.aclose()
