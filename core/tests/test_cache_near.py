"""The cache's near tier (profiles kept in process memory, validated per read by one GET of
the tenant's generation) and the run tag that makes entries of a restarted Redis unusable.

Fast paths and their correctness: a near copy is served only while no write of its tenant
has completed on any instance; callers get copies they cannot corrupt; an erased profile is
never served; a corrupted, foreign or old-format Redis entry never reaches the near tier;
and (issue 12) a Redis restarted from a snapshot whose entries missed an invalidation — the
writer died while Redis was down — never serves them, to a reader that was running all along
or to a fresh one. Shared Redis on 6379 under a prefix of its own; the restart test runs a
private redis-server with RDB persistence in a temporary directory.
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
from uuid import UUID

import pytest
from redis.asyncio import Redis

import ccvault
from ccvault import metrics
from ccvault.cache import CachedProfileStore
from ccvault.cache_codec import FORMAT_VERSION, KIND_PROFILE, open_envelope, seal_envelope
from ccvault.models import Channel, CustomerProfile, ItemType
from ccvault_contract_tests.helpers import make_field, unique_user


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
HEAD = 33  # "D" + the 32-character epoch
LOOKUPS = H.LOOKUPS

Read = Callable[[CachedProfileStore], Awaitable[CustomerProfile | None]]


def hits(tenant: UUID) -> float:
    name = "profile_cache_hits_total"
    return metrics.REGISTRY.get_sample_value(name, {"tenant_id": str(tenant)}) or 0.0


reader = H.reader


prefix = H.prefix
backend = H.backend


@pytest.fixture
async def pair(backend: Any, prefix: str) -> AsyncIterator[tuple[Any, Any]]:
    """Two instances (each its own Redis client) over one backend: two vault processes."""
    one = CachedProfileStore(backend, Redis.from_url(REDIS_URL), key_prefix=prefix)
    two = CachedProfileStore(backend, Redis.from_url(REDIS_URL), key_prefix=prefix)
    async with one, two:
        yield one, two
    await one.redis.aclose()
    await two.redis.aclose()


async def near_warm(store: CachedProfileStore, read: Read) -> CustomerProfile:
    """Read until the near tier holds the profile (a hit that fetched no body)."""
    found: CustomerProfile | None = None
    for _ in range(3):
        found = await read(store)
    assert found is not None
    assert store._near, "the near tier kept nothing"
    return found


async def profile_with_email(store: CachedProfileStore, value: str) -> CustomerProfile:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, unique_user())
    await store.update_field(tenant, profile.id, make_field("email", value))
    await store.update_field(
        tenant, profile.id, make_field("tags", ["a", "b"], source_metadata={"quote": "x"})
    )
    loaded = await store.get_by_id(tenant, profile.id)
    assert loaded is not None
    return loaded


@pytest.mark.parametrize("lookup", LOOKUPS)
async def test_a_near_hit_fetches_no_body_and_serves_the_profile(
    pair: tuple[Any, Any], lookup: str
) -> None:
    one, _ = pair
    profile = await profile_with_email(one, "old@example.com")
    read = reader(lookup, profile)
    await near_warm(one, read)
    # spoil the Redis body: a near hit never reads it, so it still serves the right data
    key = one._body_key(profile.tenant_id, profile.id)
    stored = await one.redis.get(key)
    await one.redis.set(key, stored[:HEAD] + b"garbage")
    before = hits(profile.tenant_id)
    found = await read(one)
    assert found == profile
    assert hits(profile.tenant_id) == before + 1


@pytest.mark.parametrize("lookup", LOOKUPS)
async def test_callers_cannot_corrupt_the_near_copy(pair: tuple[Any, Any], lookup: str) -> None:
    one, _ = pair
    profile = await profile_with_email(one, "old@example.com")
    read = reader(lookup, profile)
    given = await near_warm(one, read)
    tags = given.fields["tags"].value
    assert isinstance(tags, list)
    tags.append("mine")
    given.fields["tags"].source_metadata["quote"] = "changed"
    given.fields["email"].value = "changed@example.com"
    given.channel_identities.clear()
    del given.fields["email"]
    again = await read(one)
    assert again == profile
    assert again is not given and again.fields["tags"] is not given.fields["tags"]


@pytest.mark.parametrize("lookup", LOOKUPS)
async def test_a_write_on_another_instance_ends_the_near_copy(
    pair: tuple[Any, Any], lookup: str
) -> None:
    one, two = pair
    profile = await profile_with_email(one, "old@example.com")
    read = reader(lookup, profile)
    await near_warm(one, read)
    await two.update_field(profile.tenant_id, profile.id, make_field("email", "new@example.com"))
    found = await read(one)  # right after the write completed: no window
    assert found is not None and found.fields["email"].value == "new@example.com"


async def test_a_tenant_wide_write_on_another_instance_ends_the_near_copies(
    pair: tuple[Any, Any],
) -> None:
    one, two = pair
    profile = await profile_with_email(one, "old@example.com")
    read = reader("get_by_id", profile)
    await near_warm(one, read)
    email = profile.fields["email"]
    # delete_item does not name the profile: every body of the tenant goes
    assert await two.delete_item(profile.tenant_id, email.id, ItemType.PROFILE_FIELD)
    found = await read(one)
    assert found is not None and "email" not in found.fields


@pytest.mark.parametrize("lookup", LOOKUPS)
async def test_an_erased_profile_is_never_served_from_any_near_tier(
    pair: tuple[Any, Any], lookup: str
) -> None:
    one, two = pair
    profile = await profile_with_email(one, "old@example.com")
    read = reader(lookup, profile)
    await near_warm(one, read)
    await near_warm(two, read)
    assert await two.purge_profile(profile.tenant_id, profile.id)
    assert await read(one) is None
    assert await read(two) is None
    body_key = one._body_key(profile.tenant_id, profile.id)
    assert body_key not in one._near and body_key not in two._near


@pytest.mark.parametrize("damage", ["corrupted", "foreign", "older codec version"])
async def test_an_untrusted_entry_never_enters_the_near_tier(
    pair: tuple[Any, Any], backend: Any, damage: str
) -> None:
    one, two = pair
    profile = await profile_with_email(one, "old@example.com")
    read = reader("get_by_id", profile)
    key = one._body_key(profile.tenant_id, profile.id)
    assert await read(two) is not None  # two filled Redis; one has nothing near
    stored = await one.redis.get(key)
    payload = stored[HEAD:]
    if damage == "corrupted":
        bad = payload[:-9] + bytes([payload[-9] ^ 0x01]) + payload[-8:]
    elif damage == "foreign":
        bad = b'{"id": "not ours"}'
    else:
        older = bytes([FORMAT_VERSION - 1]) if FORMAT_VERSION > 0 else b"\xff"
        bad = b"ccv" + older + seal_envelope(KIND_PROFILE, open_envelope(KIND_PROFILE, payload))[4:]
    await one.redis.set(key, stored[:HEAD] + bad)
    backend.reads.clear()
    found = await read(one)
    assert found == profile
    assert sum(backend.reads.values()) == 1, "an untrusted entry was served"
    assert key not in one._near


# ---------------------------------------------------------------------------------------
# issue 12: a Redis restarted from a snapshot, the writer gone
# ---------------------------------------------------------------------------------------


def private_store(server: Any, backend: Any) -> CachedProfileStore:
    settings = ccvault.load_settings(
        store_provider="inmemory",
        redis={
            "url": server.url,
            "key_prefix": "t:",
            "socket_timeout_seconds": 0.2,
            "connect_timeout_seconds": 0.2,
            "operation_timeout_seconds": 0.3,
            "retry_after_seconds": 0.1,
        },
    )
    return CachedProfileStore.from_settings(backend, settings)


async def die(store: CachedProfileStore) -> None:
    """The process ends without flushing anything: nothing it owed Redis is ever done."""
    store._closing = True
    if store._retry_task is not None:
        store._retry_task.cancel()
        await asyncio.gather(store._retry_task, return_exceptions=True)
    await store.redis.aclose()


@pytest.mark.parametrize("lookup", LOOKUPS)
async def test_a_snapshot_restart_after_the_writer_died_serves_nothing_stale(
    tmp_path: Path, backend: Any, lookup: str
) -> None:
    server = H.RedisServer(tmp_path / "redis")
    server.start()
    try:
        async with private_store(server, backend) as running:
            profile = await profile_with_email(running, "old@example.com")
            read = reader(lookup, profile)
            await near_warm(running, read)
            await asyncio.to_thread(server.shutdown_save)  # snapshot holds the old body
            writer = private_store(server, backend)
            await writer.update_field(
                profile.tenant_id, profile.id, make_field("email", "new@example.com")
            )
            assert not writer.healthy, "the writer's invalidation was not lost"
            await die(writer)
            await asyncio.to_thread(server.start)
            with server.client() as raw:
                stale = raw.get(f"t:profile:{{{profile.tenant_id}}}:{profile.id}")
            assert isinstance(stale, bytes) and b"old@example.com" in stale, "not restored"
            # the reader that ran all along (its near copy and the restored entry agree)
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                found = await read(running)
                assert found is not None
                assert found.fields["email"].value == "new@example.com"
                if running.healthy:
                    break
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)  # Redis reachable again after retry_after
            # a reader started after the restart
            async with private_store(server, backend) as fresh:
                for _ in range(3):
                    found = await read(fresh)
                    assert found is not None
                    assert found.fields["email"].value == "new@example.com"
            # and the running reader uses the cache again, with the new value
            before = hits(profile.tenant_id)
            for _ in range(3):
                found = await read(running)
                assert found is not None and found.fields["email"].value == "new@example.com"
            assert hits(profile.tenant_id) > before
    finally:
        server.stop()


def test_near_copies_equal_the_profile_and_share_nothing_mutable() -> None:
    """NearProfile alone: flat containers copied shallowly, nested JSON re-parsed, others
    deep-copied; every copy equals the decoded profile and changing one changes no other."""
    from ccvault.cache_codec import NearProfile, decode_profile, encode_profile
    from ccvault.models import ChannelIdentity, Consent, ProfileAsset

    tenant = uuid.uuid4()
    original = CustomerProfile(
        tenant_id=tenant,
        channel_identities=[ChannelIdentity(channel=Channel.SMS, channel_user_id="+1555")],
        fields={
            "flat": make_field("flat", "v", source_metadata={"q": "x"}),
            "nested": make_field("nested", {"a": [1, {"b": None}]}, source_metadata={"l": [1]}),
            "listed": make_field("listed", ["a", "b"]),
        },
        consents=[Consent(consent_type="marketing", granted=True, ip_address="10.0.0.1")],
        assets=[
            ProfileAsset(
                name="scan",
                asset_type="image",
                storage_provider="s3",
                storage_path="k",
                analysis_field_ids=[uuid.uuid4()],
                verification_result={"ok": [True]},
            )
        ],
    )
    decoded = decode_profile(encode_profile(original) or b"")
    near = NearProfile(decoded)
    given = near.copy()
    assert given == original and repr(given) == repr(decoded)
    assert given.model_dump() == original.model_dump()
    given.fields["flat"].source_metadata["q"] = "changed"
    nested: Any = given.fields["nested"]
    nested.value["a"][1]["b"] = "changed"
    nested.source_metadata["l"].append(2)
    listed: Any = given.fields["listed"]
    listed.value.append("c")
    given.fields["listed"].value = "replaced"
    given.assets[0].analysis_field_ids.append(uuid.uuid4())
    asset: Any = given.assets[0]
    asset.verification_result["ok"].append(False)
    given.consents[0].granted = False
    given.channel_identities[0].channel_user_id = "+1666"
    given.fields.clear()
    assert near.copy() == original
