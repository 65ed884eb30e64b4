"""Cache hits build profiles without validation (``ccvault.cache_codec``): an entry that is
not one this vault wrote intact — corrupted, truncated, foreign, of the old format, one byte
flipped inside the body — is a miss: the read returns the store's data, and the entry is
replaced (the next read is a hit again). Real Redis, in-memory backend."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from redis.asyncio import Redis

from ccvault import metrics
from ccvault.cache import CachedProfileStore
from ccvault.cache_codec import KIND_PROFILE, decode_profile, open_envelope
from ccvault.models import Channel, CustomerProfile
from ccvault_contract_tests.helpers import make_definition, make_field, unique_user
from ccvault_inmemory import InMemoryProfileStore


def _servers() -> Any:
    name = "ccvault_cache_test_redis_servers"  # the name test_cache.py loads it under
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("redis_servers.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


CountingStore = _servers().CountingStore


async def drop_prefix(client: Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)


REDIS_URL = "redis://127.0.0.1:6379/0"
#: a data entry is ``D`` + the 32-character epoch (run tag + random part) + the payload
HEAD = 33


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    redis_client = Redis.from_url(REDIS_URL)
    yield redis_client
    await redis_client.aclose()


@pytest.fixture
async def prefix(client: Redis) -> AsyncIterator[str]:
    value = f"ccvault-test:{uuid.uuid4().hex}:"
    yield value
    await drop_prefix(client, value)


@pytest.fixture
def backend() -> Any:
    return CountingStore(InMemoryProfileStore())


@pytest.fixture
async def store(backend: Any, client: Redis, prefix: str) -> AsyncIterator[CachedProfileStore]:
    # the Redis entries are under test: no near tier in front of them (test_cache_near.py)
    async with CachedProfileStore(backend, client, key_prefix=prefix, near_cache_size=0) as cached:
        yield cached


def sample(name: str, tenant: UUID) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"tenant_id": str(tenant)}) or 0.0


def _flip_inside_body(payload: bytes) -> bytes:
    body = open_envelope(KIND_PROFILE, payload)
    at = payload.index(b"a@example.com") if b"a@example.com" in body else len(payload) - 5
    return payload[:at] + bytes([payload[at] ^ 0x20]) + payload[at + 1 :]


def _old_format(payload: bytes) -> bytes:
    return decode_profile(payload).model_dump_json().encode()


# each damages the payload after the "D<epoch>" prefix, or (whole=True) the whole value
DAMAGE: dict[str, tuple[Callable[[bytes], bytes], bool]] = {
    "corrupted": (lambda p: p[:10] + b"\xff\xfe garbage \x00" + p[25:], False),
    "truncated": (lambda p: p[: len(p) // 2], False),
    "flipped byte in body": (_flip_inside_body, False),
    "old format": (_old_format, False),
    "foreign value": (lambda p: b"somebody else's value", True),
    "foreign data entry": (lambda p: b'{"id": "x"}', False),
}

LOOKUPS = ("get_by_id", "get_by_customer_id", "get_by_channel_identity")


async def _read(store: CachedProfileStore, how: str, profile: CustomerProfile) -> Any:
    tenant = profile.tenant_id
    if how == "get_by_id":
        return await store.get_by_id(tenant, profile.id)
    if how == "get_by_customer_id":
        return await store.get_by_customer_id(tenant, profile.customer_id)
    identity = profile.channel_identities[0]
    return await store.get_by_channel_identity(tenant, identity.channel, identity.channel_user_id)


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("how", LOOKUPS)
async def test_an_untrusted_entry_is_a_miss_and_is_replaced(
    store: CachedProfileStore, backend: Any, client: Redis, how: str, damage: str
) -> None:
    tenant = uuid.uuid4()
    created = await store.get_or_create(tenant, Channel.WHATSAPP, unique_user())
    await store.update_field(tenant, created.id, make_field("email", "a@example.com"))
    truth = await store.get_by_id(tenant, created.id)  # miss: fills the body
    assert truth is not None
    for lookup in LOOKUPS:  # warm every pointer; all hits now
        assert await _read(store, lookup, truth) == truth
    key = store._body_key(tenant, truth.id)
    stored = await client.get(key)
    assert stored is not None and stored[:1] == b"D"
    change, whole = DAMAGE[damage]
    damaged = change(stored) if whole else stored[:HEAD] + change(stored[HEAD:])
    assert damaged != stored
    await client.set(key, damaged)

    backend.reads.clear()
    misses = sample("profile_cache_misses_total", tenant)
    found = await _read(store, how, truth)
    assert found == truth  # the store's data, not the damaged entry's
    assert sum(backend.reads.values()) == 1, backend.reads
    assert sample("profile_cache_misses_total", tenant) == misses + 1

    # the entry was replaced by an intact one: the next reads are hits
    refilled = await client.get(key)
    assert refilled is not None and refilled != damaged
    assert decode_profile(refilled[HEAD:]) == truth
    backend.reads.clear()
    for lookup in LOOKUPS:
        assert await _read(store, lookup, truth) == truth
    assert sum(backend.reads.values()) == 0, backend.reads


async def test_an_untrusted_definitions_entry_is_a_miss(
    store: CachedProfileStore, backend: Any, client: Redis
) -> None:
    tenant, agent = uuid.uuid4(), uuid.uuid4()
    await store.save_field_definition(make_definition(tenant, agent, "email"))
    first = await store.get_field_definitions(tenant, agent)
    assert [d.name for d in first] == ["email"]
    key = store._defs_key(tenant, agent)
    stored = await client.get(key)
    assert stored is not None
    flipped = stored[:-1] + bytes([stored[-1] ^ 0x01])
    for damaged in (stored[:-3], stored[:HEAD] + b"[]", flipped):
        assert damaged != stored
        await client.set(key, damaged)
        backend.reads.clear()
        assert await store.get_field_definitions(tenant, agent) == first
        assert backend.reads["get_field_definitions"] == 1
        assert await store.get_field_definitions(tenant, agent) == first  # refilled: a hit
        assert backend.reads["get_field_definitions"] == 1
