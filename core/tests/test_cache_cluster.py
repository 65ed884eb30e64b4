"""The cached stack on a real three-master Redis Cluster (private, on loopback ports).

The cluster is created with ``redis-cli --cluster create`` from installed binaries,
used through ``redis.asyncio.cluster.RedisCluster`` (``[redis] cluster = true``), and
stopped at the end of the module.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import pytest
from redis import Redis as SyncRedis
from redis.asyncio.cluster import RedisCluster

import ccvault
from ccvault import metrics
from ccvault.cache import CachedProfileStore
from ccvault.models import Channel, SourceType
from ccvault_contract_tests.helpers import (
    make_definition,
    make_field,
    make_requirement,
    unique_user,
)
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

# one private cluster per module: keep the module on one pytest-xdist worker (make test)
pytestmark = pytest.mark.xdist_group("redis-cluster")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    servers = H.RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def backend() -> Any:
    return H.CountingStore(InMemoryProfileStore())


@pytest.fixture
async def store(cluster: Any, backend: Any) -> AsyncIterator[CachedProfileStore]:
    settings = ccvault.load_settings(
        store_provider="inmemory",
        auto_encrypt_pii=False,
        redis={
            "url": cluster.url,
            "cluster": True,
            "key_prefix": f"c{uuid.uuid4().hex[:8]}:",
            "socket_timeout_seconds": 1,
            "connect_timeout_seconds": 1,
            "operation_timeout_seconds": 3,
        },
    )
    async with CachedProfileStore.from_settings(backend, settings) as cached:
        assert isinstance(cached.redis, RedisCluster)
        yield cached


def node_keys(cluster: Any, prefix: str) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for node in cluster.nodes:
        with SyncRedis(host="127.0.0.1", port=node.port) as raw:
            found[node.port] = {k.decode() for k in raw.scan_iter(match=f"{prefix}*")}
    return found


def hits(tenant: UUID) -> float:
    sample = metrics.REGISTRY.get_sample_value(
        "profile_cache_hits_total", {"tenant_id": str(tenant)}
    )
    return sample or 0.0


async def test_cached_stack_runs_on_the_cluster(
    store: CachedProfileStore, backend: Any, cluster: Any
) -> None:
    # two tenants on each master, chosen by their hash tag's slot (random tenants all fell
    # on one master in about 1 run of 240, and the spread could not be asserted)
    assert isinstance(store.redis, RedisCluster)
    await store.redis.initialize()  # the slot map (idempotent)
    masters = {node.port for node in store.redis.get_primaries()}
    assert len(masters) == 3
    owner: dict[UUID, int] = {}
    while len(owner) < 6:
        candidate = uuid.uuid4()
        node = store.redis.get_node_from_key(f"{{{candidate}}}")
        assert node is not None and node.port in masters
        if list(owner.values()).count(node.port) < 2:
            owner[candidate] = node.port
    tenants = list(owner)
    for tenant in tenants:
        agent, scenario = uuid.uuid4(), uuid.uuid4()
        profile = await store.get_or_create(tenant, Channel.WHATSAPP, unique_user())
        await store.update_field(tenant, profile.id, make_field("email", "a@example.com"))
        root = await store.get_field(tenant, profile.id, "email")
        assert root is not None
        derived = make_field(
            "domain",
            "example.com",
            source_item_id=root.id,
            source_item_type=SourceType.PROFILE_FIELD,
        )
        await store.update_field(tenant, profile.id, derived)
        await store.save_field_definition(make_definition(tenant, agent, "email"))
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "email"))
        identity = profile.channel_identities[0]
        before = hits(tenant)
        for _ in range(2):
            for found in (
                await store.get_by_id(tenant, profile.id),
                await store.get_by_customer_id(tenant, profile.customer_id),
                await store.get_by_channel_identity(
                    tenant, identity.channel, identity.channel_user_id
                ),
            ):
                assert found is not None and found.fields["domain"].value == "example.com"
            assert len(await store.get_field_definitions(tenant, agent)) == 1
            assert len(await store.get_scenario_requirements(tenant, scenario)) == 1
            chain = await store.get_derivation_chain(tenant, derived.id, "profile_field")
            assert [entry["id"] for entry in chain] == [root.id, derived.id]
        assert hits(tenant) > before + 4
        # writes invalidate across the lookups
        await store.update_field(tenant, profile.id, make_field("email", "b@example.com"))
        found = await store.get_by_customer_id(tenant, profile.customer_id)
        assert found is not None and found.fields["email"].value == "b@example.com"
        assert await store.expire_stale_fields(tenant) == 0
        await store.merge_profiles(
            tenant, (await store.get_or_create(tenant, Channel.SMS, unique_user())).id, profile.id
        )
        assert await store.get_by_id(tenant, profile.id) is not None
    # every tenant's keys sit on one node (one slot); the tenants spread over the masters
    keys = node_keys(cluster, store.key_prefix)
    for tenant in tenants:
        holders = [port for port, names in keys.items() if any(str(tenant) in k for k in names)]
        assert holders == [owner[tenant]], f"tenant {tenant} on {holders}, not {owner[tenant]}"
    assert {port for port, names in keys.items() if names} == masters


async def test_concurrent_readers_and_writers_on_the_cluster(store: CachedProfileStore) -> None:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, unique_user("web"))
    await store.update_field(tenant, profile.id, make_field("counter", 0))
    completed = 0
    violations: list[str] = []
    done = asyncio.Event()

    async def writer() -> None:
        nonlocal completed
        for seq in range(1, 60):
            await store.update_field(tenant, profile.id, make_field("counter", seq))
            completed = seq
        done.set()

    async def reader() -> None:
        while not done.is_set():
            floor = completed
            found = await store.get_by_customer_id(tenant, profile.customer_id)
            assert found is not None
            value = found.fields["counter"].value
            assert isinstance(value, int)
            if value < floor:
                violations.append(f"{value} < {floor}")

    await asyncio.wait_for(asyncio.gather(writer(), *(reader() for _ in range(8))), 60)
    assert not violations, violations[:10]


async def test_recovery_clears_poisoned_tenants_on_every_node(
    store: CachedProfileStore, cluster: Any
) -> None:
    tenants = [uuid.uuid4() for _ in range(4)]
    for tenant in tenants:
        profile = await store.get_or_create(tenant, Channel.WEB, unique_user("web"))
        await store.get_by_id(tenant, profile.id)
    epochs = [f"{store.key_prefix}epoch:{{{t}}}:p" for t in tenants]

    def existing() -> int:
        return sum(
            len([e for e in epochs if e in names])
            for names in node_keys(cluster, store.key_prefix).values()
        )

    assert existing() == 4
    for tenant in tenants[:2]:
        store._poison(tenant)  # as a lost invalidation would
    assert not store.healthy
    await store.get_by_id(uuid.uuid4(), uuid.uuid4())  # the next operation clears them
    assert store.healthy and existing() == 2
    store.max_dirty_tenants = 0
    store._poison(tenants[2])  # too many to list: every epoch under the prefix goes
    await store.get_by_id(uuid.uuid4(), uuid.uuid4())
    assert store.healthy and existing() == 0
