"""Issue 12: no size limit on values. A 48 MiB value was accepted, cache fills of its profile
timed out and the cache was bypassed for every tenant.

Now a field value (or its ``source_metadata``) larger than ``[profile]
max_field_value_bytes`` (default 2 MiB of JSON) is refused with a ValidationError before
anything is written, and a cache entry over the cache's own limit (``[redis]
max_entry_bytes``) is served from the store, never cached, counted in
``ccvault_cache_oversized_total``, and leaves the cache healthy for everyone else. Real Redis
(127.0.0.1:6379, a prefix of its own), in-memory backend.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

import ccvault
from ccvault import errors, metrics
from ccvault.cache import CachedProfileStore
from ccvault.models import Channel, CustomerProfile, VerificationLevel
from ccvault.store import StoreRules
from ccvault_contract_tests.helpers import make_field, unique_user
from ccvault_inmemory import InMemoryProfileStore

REDIS_URL = "redis://127.0.0.1:6379/0"
MIB = 1024 * 1024


@pytest.fixture
async def cached() -> AsyncIterator[CachedProfileStore]:
    prefix = f"ccvault-test:{uuid.uuid4().hex}:"
    client = Redis.from_url(REDIS_URL)
    store = CachedProfileStore(
        InMemoryProfileStore(), client, key_prefix=prefix, max_body_bytes=64 * 1024
    )
    async with store:
        yield store
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def new_profile(store: Any) -> CustomerProfile:
    return await store.get_or_create(uuid.uuid4(), Channel.SMS, unique_user())  # type: ignore[no-any-return]


def oversized() -> float:
    return (
        metrics.REGISTRY.get_sample_value("ccvault_cache_oversized_total", {"kind": "profile"})
        or 0.0
    )


async def test_the_48_mib_value_is_refused_before_anything_is_written(
    cached: CachedProfileStore,
) -> None:
    profile = await new_profile(cached)
    with pytest.raises(errors.ValidationError, match="max_field_value_bytes") as refused:
        await cached.update_field(
            profile.tenant_id, profile.id, make_field("notes", "x" * (48 * MIB))
        )
    assert "xxxx" not in str(refused.value)  # sizes, never content
    after = await cached.get_by_id(profile.tenant_id, profile.id, include_history=True)
    assert after is not None and not after.fields and not after.field_history
    assert cached.healthy


@pytest.mark.parametrize("where", ["value", "source_metadata"])
async def test_the_limit_is_the_settings_value_in_json_bytes(where: str) -> None:
    store = InMemoryProfileStore(rules=StoreRules(max_field_value_bytes=2048))
    profile = await new_profile(store)

    def field(payload: Any) -> Any:
        if where == "value":
            return make_field("notes", payload)
        return make_field("notes", "v", source_metadata={"q": payload})

    # exactly 2,048 bytes of JSON (an "é" is two bytes): accepted; one byte more is refused
    wrap = 2 if where == "value" else 8  # '"..."' or '{"q":"..."}'
    fits = "é" * ((2048 - wrap) // 2) + "a" * ((2048 - wrap) % 2)
    await store.update_field(profile.tenant_id, profile.id, field(fits))
    with pytest.raises(errors.ValidationError, match=where):
        await store.update_field(profile.tenant_id, profile.id, field(fits + "a"))


async def test_save_refuses_an_oversized_value_and_writes_nothing() -> None:
    store = InMemoryProfileStore(rules=StoreRules(max_field_value_bytes=4096))
    profile = await new_profile(store)
    profile.fields = {"notes": make_field("notes", ["word"] * 2000)}
    profile.verification_level = VerificationLevel.KYC_COMPLETE
    with pytest.raises(errors.ValidationError, match="max_field_value_bytes"):
        await store.save(profile)
    after = await store.get_by_id(profile.tenant_id, profile.id)
    assert after is not None and not after.fields
    assert after.verification_level is not VerificationLevel.KYC_COMPLETE


def test_the_default_limit_is_two_mib() -> None:
    settings = ccvault.load_settings(store_provider="inmemory")
    assert settings.profile.max_field_value_bytes == 2 * MIB
    assert settings.profile.store_rules().max_field_value_bytes == 2 * MIB
    assert settings.redis.max_entry_bytes == 4 * MIB


async def test_a_body_over_the_cache_limit_is_served_never_cached_and_harms_nobody(
    cached: CachedProfileStore,
) -> None:
    big = await new_profile(cached)
    for n in range(4):  # four 30 KB values: each allowed, the body over the 64 KiB limit
        await cached.update_field(big.tenant_id, big.id, make_field(f"note_{n}", str(n) * 30_000))
    before = oversized()
    for _ in range(2):
        found = await cached.get_by_id(big.tenant_id, big.id)
        assert found is not None and len(found.fields) == 4
    assert oversized() == before + 2, "the oversized body was not counted"
    entry = await cached.redis.get(cached._body_key(big.tenant_id, big.id))
    assert entry is None or entry[:1] == b"L", "stored"  # at most the reader's lease
    assert cached.healthy
    # another tenant's small profile is cached as usual
    small = await new_profile(cached)
    await cached.update_field(small.tenant_id, small.id, make_field("email", "a@example.com"))
    for _ in range(2):
        await cached.get_by_id(small.tenant_id, small.id)
    hits = metrics.REGISTRY.get_sample_value(
        "profile_cache_hits_total", {"tenant_id": str(small.tenant_id)}
    )
    assert hits == 1
