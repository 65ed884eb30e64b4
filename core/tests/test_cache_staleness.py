"""No stale reads: a read that starts after a write completed never returns older data.

First the seed's race, step by step (a reader holds the old row while a writer commits and
invalidates): the seed's read-through keeps the stale row for its whole TTL, the
``CachedProfileStore`` does not. Then many concurrent readers and writers on real Redis,
with a checker that compares every read against the writes completed before it started.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import pytest
from redis.asyncio import Redis

from ccvault import metrics
from ccvault.cache import CachedProfileStore
from ccvault.models import Channel, CustomerProfile, ProfileField, SourceType
from ccvault.store import ForwardingProfileStore, ProfileStore
from ccvault_contract_tests.helpers import make_definition, make_field, unique_user
from ccvault_inmemory import InMemoryProfileStore

REDIS_URL = "redis://127.0.0.1:6379/0"


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


CountingStore = _helpers().CountingStore


class SeedCachedStore(ForwardingProfileStore):
    """The seed's read-through (section 2 of the seed), for comparison only."""

    def __init__(self, backend: ProfileStore, client: Redis, prefix: str) -> None:
        super().__init__(backend)
        self.redis, self.prefix = client, prefix

    def _key(self, tenant_id: UUID, profile_id: UUID) -> str:
        return f"{self.prefix}seed:{tenant_id}:{profile_id}"

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        data = await self.redis.get(self._key(tenant_id, profile_id))
        if data:
            return CustomerProfile.model_validate_json(data)
        profile = await self.inner.get_by_id(tenant_id, profile_id)
        if profile:
            await self.redis.set(
                self._key(tenant_id, profile_id), profile.model_dump_json(), ex=1800
            )
        return profile

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        field_id = await self.inner.update_field(tenant_id, profile_id, field)
        await self.redis.delete(self._key(tenant_id, profile_id))
        return field_id


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    redis_client = Redis.from_url(REDIS_URL)
    prefix = f"ccvault-test:{uuid.uuid4().hex}:"
    redis_client.test_prefix = prefix  # type: ignore[attr-defined]
    yield redis_client
    keys = [key async for key in redis_client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await redis_client.delete(*keys)
    await redis_client.aclose()


Lookup = Callable[[ProfileStore, CustomerProfile], Awaitable[CustomerProfile | None]]

LOOKUPS: dict[str, Lookup] = {
    "id": lambda s, p: s.get_by_id(p.tenant_id, p.id),
    "customer": lambda s, p: s.get_by_customer_id(p.tenant_id, p.customer_id),
    "identity": lambda s, p: s.get_by_channel_identity(
        p.tenant_id, p.channel_identities[0].channel, p.channel_identities[0].channel_user_id
    ),
}


async def _race(store: ProfileStore, backend: Any, lookup: Lookup) -> str:
    """The seed's race, forced: returns the value a fresh read sees after it played out."""
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, unique_user())
    await store.update_field(tenant, profile.id, make_field("email", "old@example.com"))
    await lookup(store, profile)  # warm pointers (then drop the body): the next read misses
    await store.update_field(tenant, profile.id, make_field("email", "old@example.com"))
    held, release = asyncio.Event(), asyncio.Event()

    async def hold(_: str) -> None:
        backend.after_read = None
        held.set()
        await release.wait()

    backend.after_read = hold
    reader = asyncio.create_task(lookup(store, profile))  # misses, reads the old row, waits
    await asyncio.wait_for(held.wait(), 10)
    await store.update_field(tenant, profile.id, make_field("email", "new@example.com"))
    release.set()  # the write has completed; now the reader fills the cache
    old = await reader
    assert old is not None and old.fields["email"].value == "old@example.com"
    fresh = await lookup(store, profile)
    assert fresh is not None
    return str(fresh.fields["email"].value)


async def test_the_seed_read_through_serves_stale_data(client: Redis) -> None:
    backend = CountingStore(InMemoryProfileStore())
    store = SeedCachedStore(backend, client, client.test_prefix)  # type: ignore[attr-defined]
    assert await _race(store, backend, LOOKUPS["id"]) == "old@example.com"


@pytest.mark.parametrize("lookup", sorted(LOOKUPS))
async def test_the_race_leaves_no_stale_entry(client: Redis, lookup: str) -> None:
    backend = CountingStore(InMemoryProfileStore())
    store = CachedProfileStore(backend, client, key_prefix=client.test_prefix)  # type: ignore[attr-defined]
    assert await _race(store, backend, LOOKUPS[lookup]) == "new@example.com"


async def test_the_race_on_definitions(client: Redis) -> None:
    backend = CountingStore(InMemoryProfileStore())
    store = CachedProfileStore(backend, client, key_prefix=client.test_prefix)  # type: ignore[attr-defined]
    tenant, agent = uuid.uuid4(), uuid.uuid4()
    await store.save_field_definition(make_definition(tenant, agent, "email", display_name="1"))
    held, release = asyncio.Event(), asyncio.Event()

    async def hold(_: str) -> None:
        backend.after_read = None
        held.set()
        await release.wait()

    backend.after_read = hold
    reader = asyncio.create_task(store.get_field_definition(tenant, agent, "email"))
    await asyncio.wait_for(held.wait(), 10)
    await store.save_field_definition(make_definition(tenant, agent, "email", display_name="2"))
    release.set()
    await reader
    found = await store.get_field_definition(tenant, agent, "email")
    assert found is not None and found.display_name == "2"


async def test_the_race_on_a_chain_whose_missing_source_is_written(client: Redis) -> None:
    """A chain reader holds "derived -> (missing source)" while a writer adds that source:
    no write of a new item resets chains, yet the held chain must never be cached."""
    backend = CountingStore(InMemoryProfileStore())
    store = CachedProfileStore(backend, client, key_prefix=client.test_prefix)  # type: ignore[attr-defined]
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, unique_user())
    missing = uuid.uuid4()
    derived = make_field(
        "domain", "example.com", source_item_id=missing, source_item_type=SourceType.PROFILE_FIELD
    )
    await store.update_field(tenant, profile.id, derived)
    held, release = asyncio.Event(), asyncio.Event()

    async def hold(_: str) -> None:
        backend.after_read = None
        held.set()
        await release.wait()

    backend.after_read = hold
    reader = asyncio.create_task(store.get_derivation_chain(tenant, derived.id, "profile_field"))
    await asyncio.wait_for(held.wait(), 10)
    await store.update_field(tenant, profile.id, make_field("source", "x", id=missing))
    release.set()
    assert [e["id"] for e in await reader] == [derived.id]
    for _ in range(2):
        chain = await store.get_derivation_chain(tenant, derived.id, "profile_field")
        assert [e["id"] for e in chain] == [missing, derived.id]


async def test_many_concurrent_readers_and_writers_never_read_stale(client: Redis) -> None:
    """Every read is checked against the writes that had completed when it started.

    Halfway, every writer pauses until the readers have hit the cache (or read 2,000 times
    without a hit): under constant writes a hit is left to chance (0 to 6 in 300 reads), and
    a quiet moment is where an entry filled before a write would be served if invalidation
    were wrong.
    """
    rng = random.Random(7)
    backend = CountingStore(InMemoryProfileStore())

    async def jitter(_: str) -> None:
        # widen the window between "read the database" and "fill the cache"
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(0)
        if rng.random() < 0.1:
            await asyncio.sleep(0.001)

    backend.after_read = jitter
    store = CachedProfileStore(
        backend,
        client,
        timedelta(minutes=5),
        key_prefix=client.test_prefix,  # type: ignore[attr-defined]
    )
    tenant, agent = uuid.uuid4(), uuid.uuid4()
    profiles = [
        await store.get_or_create(tenant, Channel.WHATSAPP, unique_user()) for _ in range(4)
    ]
    names = ["f0", "f1", "f2"]
    completed: dict[tuple[UUID, str], int] = {}
    for profile in profiles:
        for name in names:
            await store.update_field(tenant, profile.id, make_field(name, 0))
            completed[(profile.id, name)] = 0
    await store.save_field_definition(make_definition(tenant, agent, "email", display_name="0"))
    definitions_done = 0
    writes_per_field = 50
    violations: list[str] = []
    reads = 0

    writer_count = len(profiles) * len(names) + 1
    paused = 0
    quiet_reads = 0
    quiet_hit = False
    hits_at_quiet = 0.0
    resume = asyncio.Event()

    def hits_so_far() -> float:
        sample = metrics.REGISTRY.get_sample_value(
            "profile_cache_hits_total", {"tenant_id": str(tenant)}
        )
        return (sample or 0.0) - hits_before

    async def pause_halfway(seq: int) -> None:
        nonlocal paused, hits_at_quiet
        if seq == writes_per_field // 2:
            paused += 1
            if paused == writer_count:
                hits_at_quiet = hits_so_far()
            await resume.wait()

    async def field_writer(profile: CustomerProfile, name: str) -> None:
        for seq in range(1, writes_per_field + 1):
            await store.update_field(tenant, profile.id, make_field(name, seq))
            completed[(profile.id, name)] = seq
            await pause_halfway(seq)
            await asyncio.sleep(0)

    async def definition_writer() -> None:
        nonlocal definitions_done
        for seq in range(1, writes_per_field + 1):
            await store.save_field_definition(
                make_definition(tenant, agent, "email", display_name=str(seq))
            )
            definitions_done = seq
            await pause_halfway(seq)
            await asyncio.sleep(0)

    def after_read() -> None:
        # ends the quiet moment: bounded by a count of reads, never by time
        nonlocal quiet_reads, quiet_hit
        if paused == writer_count and not resume.is_set():
            quiet_reads += 1
            quiet_hit = hits_so_far() > hits_at_quiet
            if quiet_hit or quiet_reads >= 2000:
                resume.set()

    async def reader(worker: int) -> None:
        nonlocal reads
        local = random.Random(worker)
        while not all(v == writes_per_field for v in completed.values()):
            if local.random() < 0.15:
                floor = definitions_done
                found = await store.get_field_definition(tenant, agent, "email")
                assert found is not None
                if int(found.display_name) < floor:
                    violations.append(f"definition {found.display_name} < {floor}")
                reads += 1
                after_read()
                continue
            profile = local.choice(profiles)
            kind = local.choice(sorted(LOOKUPS))
            floors = {name: completed[(profile.id, name)] for name in names}
            got = await LOOKUPS[kind](store, profile)
            assert got is not None
            reads += 1
            for name in names:
                value = got.fields[name].value
                assert isinstance(value, int)
                if value < floors[name]:
                    violations.append(f"{kind} read {name}={value} after write {floors[name]}")
            after_read()

    hits_before = (
        metrics.REGISTRY.get_sample_value("profile_cache_hits_total", {"tenant_id": str(tenant)})
        or 0.0
    )
    writers = [field_writer(p, n) for p in profiles for n in names] + [definition_writer()]
    assert len(writers) == writer_count
    await asyncio.wait_for(asyncio.gather(*writers, *(reader(i) for i in range(16))), timeout=120)
    assert not violations, violations[:10]
    assert reads > 200
    assert quiet_hit, "the quiet moment never hit the cache, so it proved nothing"
    # and after the dust settles, every lookup serves the last value
    for profile in profiles:
        for kind in LOOKUPS:
            got = await LOOKUPS[kind](store, profile)
            assert got is not None
            assert {n: got.fields[n].value for n in names} == dict.fromkeys(names, writes_per_field)
