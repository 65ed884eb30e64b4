"""Redis faults, on a private redis-server this module starts, stops, freezes and restarts.

Reads and writes keep working from the backend while Redis is down or frozen (every Redis
call is bounded by ``operation_timeout``), the cache is used again once Redis is back, and
an entry that may have missed an invalidation while Redis was away is never served, even
when Redis comes back with its old data (restored from a snapshot).
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import pytest
from redis import Redis as SyncRedis

import ccvault
from ccvault import errors, metrics
from ccvault.cache import CachedProfileStore
from ccvault.models import Channel, CustomerProfile
from ccvault_contract_tests.helpers import make_field, unique_user
from ccvault_inmemory import InMemoryProfileStore


def _helpers() -> ModuleType:
    name = "ccvault_cache_test_redis_servers"
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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    redis_server = H.RedisServer(tmp_path / "redis")
    redis_server.start()
    yield redis_server
    redis_server.stop()


def make_store(server: Any, backend: Any, **redis: Any) -> CachedProfileStore:
    options = {
        "url": server.url,
        "key_prefix": "t:",
        "socket_timeout_seconds": 0.2,
        "connect_timeout_seconds": 0.2,
        "operation_timeout_seconds": 0.3,
        "retry_after_seconds": 0.1,
        **redis,
    }
    settings = ccvault.load_settings(store_provider="inmemory", redis=options)
    return CachedProfileStore.from_settings(backend, settings)


@pytest.fixture
def backend() -> Any:
    return H.CountingStore(InMemoryProfileStore())


@pytest.fixture
async def store(server: Any, backend: Any) -> AsyncIterator[CachedProfileStore]:
    async with make_store(server, backend) as cached:
        yield cached


def hits(tenant: UUID) -> float:
    return (
        metrics.REGISTRY.get_sample_value("profile_cache_hits_total", {"tenant_id": str(tenant)})
        or 0.0
    )


async def email(store: CachedProfileStore, profile: CustomerProfile) -> Any:
    found = await asyncio.wait_for(store.get_by_id(profile.tenant_id, profile.id), 10)
    assert found is not None
    return found.fields["email"].value


async def cached_again(store: CachedProfileStore, profile: CustomerProfile, value: str) -> None:
    """Poll until reads are served from the cache again; every read must return ``value``."""
    deadline = asyncio.get_running_loop().time() + 15
    while asyncio.get_running_loop().time() < deadline:
        before = hits(profile.tenant_id)
        assert await email(store, profile) == value
        if hits(profile.tenant_id) > before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the cache was never used again after Redis came back")


async def warm(store: CachedProfileStore, value: str = "old@example.com") -> CustomerProfile:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, unique_user())
    await store.update_field(tenant, profile.id, make_field("email", value))
    assert await email(store, profile) == value
    before = hits(tenant)
    assert await email(store, profile) == value
    assert hits(tenant) == before + 1, "not cached to begin with"
    return profile


def traces(server: Any, profile: CustomerProfile) -> list[bytes]:
    """Every key of Redis that holds the profile's body, one of its pointers or their index."""
    tenant = profile.tenant_id
    with SyncRedis(host="127.0.0.1", port=server.port) as raw:
        found = [
            *raw.scan_iter(match=f"t:profile:{{{tenant}}}:*"),
            *raw.scan_iter(match=f"t:pointers:{{{tenant}}}:*"),
        ]
    return [key for key in found if isinstance(key, bytes)]


def body(server: Any, profile: CustomerProfile) -> bytes | None:
    with SyncRedis(host="127.0.0.1", port=server.port) as raw:
        value = raw.get(f"t:profile:{{{profile.tenant_id}}}:{profile.id}")
        return value if isinstance(value, bytes) else None


async def test_redis_down_reads_and_writes_use_the_backend(
    store: CachedProfileStore, server: Any
) -> None:
    profile = await warm(store)
    server.stop()
    assert await email(store, profile) == "old@example.com"
    await asyncio.wait_for(
        store.update_field(profile.tenant_id, profile.id, make_field("email", "new@example.com")),
        10,
    )
    assert not store.healthy
    for _ in range(3):
        assert await email(store, profile) == "new@example.com"
    found = await store.get_by_customer_id(profile.tenant_id, profile.customer_id)
    assert found is not None and found.id == profile.id
    await asyncio.to_thread(server.start)
    await cached_again(store, profile, "new@example.com")
    assert store.healthy


async def test_entries_restored_from_a_snapshot_are_never_served(
    store: CachedProfileStore, server: Any
) -> None:
    """Redis comes back with the very entries a write could not invalidate."""
    profile = await warm(store)
    await asyncio.to_thread(server.shutdown_save)
    await store.update_field(profile.tenant_id, profile.id, make_field("email", "new@example.com"))
    await asyncio.to_thread(server.start)
    stale = body(server, profile)
    assert stale is not None and b"old@example.com" in stale, "snapshot did not restore it"
    assert await email(store, profile) == "new@example.com"
    await cached_again(store, profile, "new@example.com")
    recovered = metrics.REGISTRY.get_sample_value(
        "profile_cache_invalidations_total",
        {"tenant_id": str(profile.tenant_id), "reason": "redis_recovery"},
    )
    assert recovered == 1


async def test_a_frozen_redis_is_bypassed_within_the_timeout(
    store: CachedProfileStore, server: Any
) -> None:
    profile = await warm(store)
    server.pause()
    try:
        # every call returns (wait_for is only a guard against hanging), from the backend
        assert await email(store, profile) == "old@example.com"
        await asyncio.wait_for(
            store.update_field(
                profile.tenant_id, profile.id, make_field("email", "new@example.com")
            ),
            10,
        )
        assert await email(store, profile) == "new@example.com"
    finally:
        server.resume()
    await cached_again(store, profile, "new@example.com")


async def test_a_cancelled_invalidation_poisons_the_tenant(server: Any, backend: Any) -> None:
    async with make_store(server, backend, operation_timeout_seconds=30) as store:
        profile = await warm(store)
        committed = asyncio.Event()
        forward = backend._update_field

        async def update_and_signal(*args: Any) -> Any:
            result = await forward(*args)
            committed.set()  # the backend write is done; the invalidation comes next
            return result

        backend._update_field = update_and_signal
        server.pause()
        try:
            writer = asyncio.create_task(
                store.update_field(
                    profile.tenant_id, profile.id, make_field("email", "new@example.com")
                )
            )
            await asyncio.wait_for(committed.wait(), 10)
            writer.cancel()
            # (redis-py may turn the cancellation into its own timeout: either way the
            # invalidation did not happen, and the tenant must be poisoned)
            await asyncio.wait_for(asyncio.gather(writer, return_exceptions=True), 10)
            assert not store.healthy
        finally:
            server.resume()
        assert await email(store, profile) == "new@example.com"
        await cached_again(store, profile, "new@example.com")


async def test_too_many_poisoned_tenants_clear_every_epoch(server: Any, backend: Any) -> None:
    async with make_store(server, backend) as store:
        store.max_dirty_tenants = 1
        profiles = [await warm(store), await warm(store), await warm(store)]
        await asyncio.to_thread(server.shutdown_save)
        for profile in profiles:
            await store.update_field(
                profile.tenant_id, profile.id, make_field("email", "new@example.com")
            )
        await asyncio.to_thread(server.start)
        assert all(body(server, p) is not None for p in profiles)
        for profile in profiles:
            assert await email(store, profile) == "new@example.com"
        for profile in profiles:
            await cached_again(store, profile, "new@example.com")


async def test_no_stale_read_while_redis_stops_freezes_and_restarts(
    server: Any, backend: Any
) -> None:
    """Readers and writers run on while Redis goes away and comes back, several times."""
    rng = random.Random(11)

    async def jitter(_: str) -> None:
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)

    backend.after_read = jitter
    async with make_store(server, backend) as store:
        tenant = uuid.uuid4()
        profiles = [await store.get_or_create(tenant, Channel.SMS, unique_user()) for _ in range(3)]
        completed: dict[UUID, int] = {}
        for profile in profiles:
            await store.update_field(tenant, profile.id, make_field("counter", 0))
            completed[profile.id] = 0
        stop = asyncio.Event()
        violations: list[str] = []
        done = {"reads": 0, "writes": 0}

        async def writer(profile: CustomerProfile) -> None:
            seq = 0
            while not stop.is_set():
                seq += 1
                await store.update_field(tenant, profile.id, make_field("counter", seq))
                completed[profile.id] = seq
                done["writes"] += 1
                await asyncio.sleep(0.002)

        async def reader(worker: int) -> None:
            local = random.Random(worker)
            while not stop.is_set():
                profile = local.choice(profiles)
                floor = completed[profile.id]
                if local.random() < 0.5:
                    got = await store.get_by_id(tenant, profile.id)
                else:
                    got = await store.get_by_customer_id(tenant, profile.customer_id)
                assert got is not None
                value = got.fields["counter"].value
                assert isinstance(value, int)
                if value < floor:
                    violations.append(f"read {value} after write {floor}")
                done["reads"] += 1
                await asyncio.sleep(0)

        async def progress(phase: str, reads: int = 20, writes: int = 6) -> None:
            """Wait until the workload completed ``reads`` reads and ``writes`` writes in
            this phase (polled, bounded), however slow the machine."""
            start = dict(done)
            deadline = asyncio.get_running_loop().time() + 30
            while (
                done["reads"] - start["reads"] < reads or done["writes"] - start["writes"] < writes
            ):
                for task in tasks:
                    if task.done():
                        task.result()  # a failed worker fails the test now
                assert asyncio.get_running_loop().time() < deadline, f"no progress: {phase}"
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(writer(p)) for p in profiles]
        tasks += [asyncio.create_task(reader(i)) for i in range(8)]
        try:
            for round_ in range(2):
                await progress("Redis up")
                await asyncio.to_thread(server.shutdown_save if round_ else server.stop)
                await progress("Redis down")
                await asyncio.to_thread(server.start)
                await progress("Redis restarted")
                server.pause()
                await progress("Redis frozen")
                server.resume()
            await progress("Redis resumed")
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert not violations, violations[:10]
        for profile in profiles:
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                before = hits(tenant)
                got = await store.get_by_id(tenant, profile.id)
                assert got is not None and got.fields["counter"].value == completed[profile.id]
                if hits(tenant) > before:
                    break
                assert asyncio.get_running_loop().time() < deadline, "cache never used again"
                await asyncio.sleep(0.05)


async def purge_while_redis_is_away(
    store: CachedProfileStore, server: Any, backend: Any
) -> CustomerProfile:
    """Cache a profile (body and pointers), then purge it while Redis is down; Redis comes
    back from a snapshot that still holds all of it."""
    profile = await warm(store)
    found = await store.get_by_customer_id(profile.tenant_id, profile.customer_id)
    assert found is not None
    assert len(traces(server, profile)) >= 3, "body, pointers and their index not cached"
    await asyncio.to_thread(server.shutdown_save)
    with pytest.raises(errors.ProviderUnavailableError, match="cache erasure pending"):
        await asyncio.wait_for(store.purge_profile(profile.tenant_id, profile.id), 10)
    assert await backend.get_by_id(profile.tenant_id, profile.id) is None, "not purged"
    assert not store.healthy
    return profile


async def test_a_purge_retried_after_its_cache_erasure_failed_erases(
    server: Any, backend: Any
) -> None:
    async with make_store(server, backend) as store:
        # no background retry during this test: the retried purge must do the erasure
        store.retry_after = store.max_retry_interval = 3600
        profile = await purge_while_redis_is_away(store, server, backend)
        await asyncio.to_thread(server.start)
        assert traces(server, profile), "the snapshot did not restore the erased profile"
        # the backend has nothing left to purge, the cache erasure is still done
        assert await store.purge_profile(profile.tenant_id, profile.id) is False
        assert traces(server, profile) == []
        assert await store.get_by_id(profile.tenant_id, profile.id) is None
        assert await store.get_by_customer_id(profile.tenant_id, profile.customer_id) is None


async def test_aclose_completes_a_pending_cache_erasure(server: Any, backend: Any) -> None:
    store = make_store(server, backend)
    async with store:
        store.retry_after = store.max_retry_interval = 3600
        profile = await purge_while_redis_is_away(store, server, backend)
        await asyncio.to_thread(server.start)
        assert traces(server, profile), "the snapshot did not restore the erased profile"
    assert traces(server, profile) == []


async def test_a_pending_erasure_is_retried_in_the_background(server: Any, backend: Any) -> None:
    async with make_store(server, backend) as store:
        profile = await purge_while_redis_is_away(store, server, backend)
        await asyncio.to_thread(server.start)
        # no further call on the store: its background retry erases once Redis answers
        deadline = asyncio.get_running_loop().time() + 15
        while traces(server, profile):
            assert asyncio.get_running_loop().time() < deadline, "erasure never retried"
            await asyncio.sleep(0.05)
        assert store.healthy


async def test_another_process_stops_serving_what_a_lost_invalidation_left(
    server: Any, backend: Any
) -> None:
    """Process A's invalidation is lost while Redis is away; Redis comes back with B's old
    entry. A clears its poisoned tenant in the background, without any further call, so B
    stops serving the old value."""
    async with make_store(server, backend) as a, make_store(server, backend) as b:
        profile = await warm(b)
        await asyncio.to_thread(server.shutdown_save)
        await a.update_field(profile.tenant_id, profile.id, make_field("email", "new@example.com"))
        assert not a.healthy
        await asyncio.to_thread(server.start)
        assert body(server, profile) is not None, "snapshot did not restore B's entry"
        deadline = asyncio.get_running_loop().time() + 15
        while not a.healthy:  # A is never called: only its background retry can clear it
            assert asyncio.get_running_loop().time() < deadline, "A never retried"
            await asyncio.sleep(0.05)
        assert await email(b, profile) == "new@example.com"
        await cached_again(b, profile, "new@example.com")


async def test_aclose_flushes_a_lost_invalidation(server: Any, backend: Any) -> None:
    async with make_store(server, backend) as b:
        profile = await warm(b)
        a = make_store(server, backend)
        async with a:
            a.retry_after = a.max_retry_interval = 3600  # only aclose may clear it
            await asyncio.to_thread(server.shutdown_save)
            await a.update_field(
                profile.tenant_id, profile.id, make_field("email", "new@example.com")
            )
            await asyncio.to_thread(server.start)
            assert body(server, profile) is not None, "snapshot did not restore B's entry"
            assert not a.healthy
        assert await email(b, profile) == "new@example.com"
