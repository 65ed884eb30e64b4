"""``CachedProfileStore`` on the shared Redis: what is cached, what each write invalidates,
metrics, key layout, settings. Every test uses its own key prefix and drops it afterwards."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

import ccvault
from ccvault import errors, metrics
from ccvault.cache import CachedProfileStore
from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    ItemStatus,
    SourceType,
    VerificationLevel,
)
from ccvault_contract_tests.helpers import (
    make_asset,
    make_definition,
    make_field,
    make_requirement,
    ts,
    unique_user,
)
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


async def drop_prefix(client: Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)


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
    async with CachedProfileStore(backend, client, key_prefix=prefix) as cached:
        yield cached


@pytest.fixture
def tenant() -> UUID:
    return uuid.uuid4()


def sample(name: str, tenant: UUID, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"tenant_id": str(tenant), **labels}) or 0.0


async def new_profile(store: CachedProfileStore, tenant: UUID) -> CustomerProfile:
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, unique_user())
    await store.update_field(tenant, profile.id, make_field("email", "a@example.com"))
    return profile


def ident(profile: CustomerProfile) -> tuple[Channel, str]:
    identity = profile.channel_identities[0]
    return identity.channel, identity.channel_user_id


# ---------------------------------------------------------------------------------------
# reads
# ---------------------------------------------------------------------------------------


async def test_profile_served_from_cache_by_id_customer_and_identity(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    profile = await new_profile(store, tenant)
    channel, user = ident(profile)
    first = await store.get_by_id(tenant, profile.id)  # miss: fills body and pointers
    assert first is not None and first.fields["email"].value == "a@example.com"
    backend.reads.clear()
    hits = sample("profile_cache_hits_total", tenant)
    for _ in range(3):
        assert await store.get_by_id(tenant, profile.id) == first
        assert await store.get_by_customer_id(tenant, profile.customer_id) == first
        assert await store.get_by_channel_identity(tenant, channel, user) == first
        assert (await store.get_or_create(tenant, channel, user)).id == profile.id
    assert sum(backend.reads.values()) == 0, backend.reads
    assert sample("profile_cache_hits_total", tenant) == hits + 12


async def test_pointer_lookup_warms_up(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    # created behind the cache's back: no pointer, no body
    profile = await backend.get_or_create(tenant, Channel.WHATSAPP, unique_user())
    misses = sample("profile_cache_misses_total", tenant)
    # cold: no pointer yet; the first read learns the profile id, the second leases its body
    for _ in range(2):
        found = await store.get_by_customer_id(tenant, profile.customer_id)
        assert found is not None and found.id == profile.id
    assert sample("profile_cache_misses_total", tenant) == misses + 2
    backend.reads.clear()
    found = await store.get_by_customer_id(tenant, profile.customer_id)
    assert found is not None and found.id == profile.id
    assert sum(backend.reads.values()) == 0


async def test_unknown_profile_is_not_cached(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    for _ in range(2):
        assert await store.get_by_id(tenant, uuid.uuid4()) is None
        assert await store.get_by_customer_id(tenant, uuid.uuid4()) is None
    assert backend.reads["get_by_id"] == 2


async def test_history_reads_bypass_the_cache(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    profile = await new_profile(store, tenant)
    await store.get_by_id(tenant, profile.id)
    backend.reads.clear()
    for _ in range(2):
        found = await store.get_by_id(tenant, profile.id, include_history=True)
        assert found is not None and len(found.field_history["email"]) == 1
        found = await store.get_by_customer_id(tenant, profile.customer_id, include_history=True)
        assert found is not None and found.field_history
    assert backend.reads["get_by_id"] == 2
    assert backend.reads["get_by_customer_id"] == 2


async def test_cached_profile_never_serves_an_expired_field(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    # the store's clock, moved past the expiry (a wall-clock window of 0.3 s failed
    # whenever the machine stalled that long between the write and the first read)
    clock = [ts()]
    backend.inner.now = lambda: clock[0]
    assert store.now() == clock[0]
    profile = await store.get_or_create(tenant, Channel.SMS, unique_user())
    await store.update_field(tenant, profile.id, make_field("otp", "1234", expires_at=ts(60)))
    cached = await store.get_by_id(tenant, profile.id)
    assert cached is not None and "otp" in cached.fields
    reads = backend.reads["get_by_id"]
    clock[0] = ts(120)
    again = await store.get_by_id(tenant, profile.id)
    assert again is not None and "otp" not in again.fields
    assert backend.reads["get_by_id"] == reads  # served by the cache


async def test_definitions_requirements_and_chains_are_cached(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    agent, scenario, step = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await store.save_field_definition(make_definition(tenant, agent, "email"))
    await store.save_field_definition(make_definition(tenant, agent, "phone", enabled=False))
    await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "email"))
    await store.save_scenario_requirement(
        make_requirement(tenant, agent, scenario, "phone", step_id=step)
    )
    profile = await new_profile(store, tenant)
    root = await store.get_field(tenant, profile.id, "email")
    assert root is not None
    derived = make_field(
        "domain", "example.com", source_item_id=root.id, source_item_type=SourceType.PROFILE_FIELD
    )
    await store.update_field(tenant, profile.id, derived)
    for _ in range(3):
        assert [d.name for d in await store.get_field_definitions(tenant, agent)] == ["email"]
        everything = await store.get_field_definitions(tenant, agent, enabled_only=False)
        assert [d.name for d in everything] == ["email", "phone"]
        phone = await store.get_field_definition(tenant, agent, "phone")
        assert phone is not None and not phone.enabled
        assert await store.get_field_definition(tenant, agent, "nope") is None
        assert [r.field_name for r in await store.get_scenario_requirements(tenant, scenario)] == [
            "email"
        ]
        by_step = await store.get_scenario_requirements(tenant, scenario, step_id=step)
        assert [r.field_name for r in by_step] == ["phone"]
        chain = await store.get_derivation_chain(tenant, derived.id, "profile_field")
        assert [entry["id"] for entry in chain] == [root.id, derived.id]
    assert backend.reads["get_field_definitions"] == 1
    assert backend.reads["get_scenario_requirements"] == 2
    assert backend.reads["get_derivation_chain"] == 1


# ---------------------------------------------------------------------------------------
# every write path invalidates what it changes
# ---------------------------------------------------------------------------------------


async def _cache(store: CachedProfileStore, *profiles: CustomerProfile) -> None:
    for profile in profiles:
        for _ in range(2):  # the second lookup by customer id fills the body via its pointer
            await store.get_by_customer_id(profile.tenant_id, profile.customer_id)
            await store.get_by_id(profile.tenant_id, profile.id)


async def _reads_backend(
    store: CachedProfileStore, backend: Any, profile: CustomerProfile
) -> CustomerProfile | None:
    """Read by id; assert the read had to go to the backend (the entry was invalidated)."""
    before = backend.reads["get_by_id"]
    found = await store.get_by_id(profile.tenant_id, profile.id)
    assert backend.reads["get_by_id"] == before + 1, "served a cached entry after the write"
    return found


async def test_save_invalidates(store: CachedProfileStore, backend: Any, tenant: UUID) -> None:
    profile = await new_profile(store, tenant)
    await _cache(store, profile)
    current = await store.get_by_id(tenant, profile.id)
    assert current is not None
    current.verification_level = VerificationLevel.EMAIL_VERIFIED
    before = sample("profile_cache_invalidations_total", tenant, reason="save")
    await store.save(current)
    found = await _reads_backend(store, backend, profile)
    assert found is not None and found.verification_level is VerificationLevel.EMAIL_VERIFIED
    assert sample("profile_cache_invalidations_total", tenant, reason="save") == before + 1
    # a save that changes the customer id: the old customer id no longer finds it
    found.customer_id = uuid.uuid4()
    await store.save(found)
    assert await store.get_by_customer_id(tenant, profile.customer_id) is None
    moved = await store.get_by_customer_id(tenant, found.customer_id)
    assert moved is not None and moved.id == profile.id


async def test_save_releasing_an_identity_invalidates_its_pointer(
    store: CachedProfileStore, tenant: UUID
) -> None:
    profile = await new_profile(store, tenant)
    channel, user = ident(profile)
    for _ in range(2):
        assert await store.get_by_channel_identity(tenant, channel, user) is not None
    current = await store.get_by_id(tenant, profile.id)
    assert current is not None
    current.channel_identities = [ChannelIdentity(channel=Channel.EMAIL, channel_user_id="x@y.z")]
    await store.save(current)
    assert await store.get_by_channel_identity(tenant, channel, user) is None
    fresh = await store.get_or_create(tenant, channel, user)
    assert fresh.id != profile.id


async def test_delete_invalidates(store: CachedProfileStore, tenant: UUID) -> None:
    profile = await new_profile(store, tenant)
    channel, user = ident(profile)
    await _cache(store, profile)
    assert await store.get_by_channel_identity(tenant, channel, user) is not None
    assert await store.delete(tenant, profile.id) is True
    assert await store.get_by_id(tenant, profile.id) is None
    assert await store.get_by_customer_id(tenant, profile.customer_id) is None
    assert await store.get_by_channel_identity(tenant, channel, user) is None
    before = sample("profile_cache_invalidations_total", tenant, reason="delete")
    assert await store.delete(tenant, profile.id) is False  # nothing changed, nothing to do
    assert sample("profile_cache_invalidations_total", tenant, reason="delete") == before


async def test_update_field_and_add_asset_invalidate(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    profile = await new_profile(store, tenant)
    await _cache(store, profile)
    await store.update_field(tenant, profile.id, make_field("email", "b@example.com"))
    found = await _reads_backend(store, backend, profile)
    assert found is not None and found.fields["email"].value == "b@example.com"
    await store.add_asset(tenant, profile.id, make_asset("passport"))
    found = await _reads_backend(store, backend, profile)
    assert found is not None and [a.name for a in found.assets] == ["passport"]
    # refused writes change nothing and invalidate nothing
    with pytest.raises(errors.ActiveFieldConflictError):
        await store.update_field(
            tenant, profile.id, make_field("email", "c@example.com"), supersede_existing=False
        )
    before = backend.reads["get_by_id"]
    await store.get_by_id(tenant, profile.id)
    assert backend.reads["get_by_id"] == before


async def test_link_channel_invalidates(store: CachedProfileStore, tenant: UUID) -> None:
    profile = await new_profile(store, tenant)
    await _cache(store, profile)
    identity = ChannelIdentity(channel=Channel.TELEGRAM, channel_user_id=unique_user("tg"))
    assert await store.link_channel(tenant, profile.id, identity) is True
    found = await store.get_by_id(tenant, profile.id)
    assert found is not None
    assert identity.channel_user_id in [i.channel_user_id for i in found.channel_identities]
    by_new = await store.get_by_channel_identity(tenant, identity.channel, identity.channel_user_id)
    assert by_new is not None and by_new.id == profile.id


async def test_merge_invalidates_both_profiles(store: CachedProfileStore, tenant: UUID) -> None:
    source, target = await new_profile(store, tenant), await new_profile(store, tenant)
    await store.update_field(tenant, source.id, make_field("phone", "+15550001111"))
    await _cache(store, source, target)
    channel, user = ident(source)
    assert await store.get_by_channel_identity(tenant, channel, user) is not None
    before = sample("profile_cache_invalidations_total", tenant, reason="merge")
    await store.merge_profiles(tenant, source.id, target.id)
    assert sample("profile_cache_invalidations_total", tenant, reason="merge") == before + 1
    assert await store.get_by_id(tenant, source.id) is None
    assert await store.get_by_customer_id(tenant, source.customer_id) is None
    merged = await store.get_by_id(tenant, target.id)
    assert merged is not None and "phone" in merged.fields
    by_moved = await store.get_by_channel_identity(tenant, channel, user)
    assert by_moved is not None and by_moved.id == target.id


async def test_tenant_wide_expiry_invalidates_every_profile(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    first, second = await new_profile(store, tenant), await new_profile(store, tenant)
    await store.update_field(tenant, first.id, make_field("otp", "1", expires_at=ts(-60)))
    await _cache(store, first, second)
    # nothing changed for the other profile's sweep: no invalidation
    before = sample("profile_cache_invalidations_total", tenant, reason="expire")
    assert await store.expire_stale_fields(tenant, second.id) == 0
    assert sample("profile_cache_invalidations_total", tenant, reason="expire") == before
    assert await store.expire_stale_fields(tenant) == 1
    assert sample("profile_cache_invalidations_total", tenant, reason="expire") == before + 1
    await _reads_backend(store, backend, first)
    await _reads_backend(store, backend, second)


async def test_expiry_of_one_profile_invalidates_only_it(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    first, second = await new_profile(store, tenant), await new_profile(store, tenant)
    await store.update_field(tenant, first.id, make_field("otp", "1", expires_at=ts(-60)))
    await _cache(store, first, second)
    assert await store.expire_stale_fields(tenant, first.id) == 1
    await _reads_backend(store, backend, first)
    before = backend.reads["get_by_id"]
    await store.get_by_id(tenant, second.id)
    assert backend.reads["get_by_id"] == before


async def test_purge_delete_item_and_mark_orphans_invalidate(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    origin, profile = await new_profile(store, tenant), await new_profile(store, tenant)
    source = await store.get_field(tenant, origin.id, "email")
    assert source is not None
    derived = make_field(
        "domain", "example.com", source_item_id=source.id, source_item_type=SourceType.PROFILE_FIELD
    )
    await store.update_field(tenant, profile.id, derived)
    await store.update_field(tenant, profile.id, make_field("nickname", "ada"))
    await _cache(store, origin, profile)
    chain = await store.get_derivation_chain(tenant, derived.id, "profile_field")
    assert len(chain) == 2
    # purge: the profile and every chain through its items
    assert await store.purge_profile(tenant, origin.id) is True
    assert await store.get_by_id(tenant, origin.id) is None
    assert len(await store.get_derivation_chain(tenant, derived.id, "profile_field")) == 1
    # mark_orphans: the derived field becomes ORPHANED in a profile the cache must drop
    assert await store.mark_orphans(tenant) == 1
    found = await _reads_backend(store, backend, profile)
    assert found is not None and "domain" not in found.fields
    orphan = await store.get_field(tenant, profile.id, "domain", status=ItemStatus.ORPHANED)
    assert orphan is not None
    # delete_item: the owner is unknown, so every body of the tenant goes
    nickname = await store.get_field(tenant, profile.id, "nickname")
    assert nickname is not None
    await store.get_by_id(tenant, profile.id)
    assert await store.delete_item(tenant, nickname.id, "profile_field") is True
    found = await _reads_backend(store, backend, profile)
    assert found is not None and "nickname" not in found.fields


async def test_definition_writes_invalidate(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    agent, other_agent = uuid.uuid4(), uuid.uuid4()
    await store.save_field_definition(make_definition(tenant, agent, "email"))
    await store.save_field_definition(make_definition(tenant, other_agent, "email"))
    assert len(await store.get_field_definitions(tenant, agent)) == 1
    assert len(await store.get_field_definitions(tenant, other_agent)) == 1
    await store.save_field_definition(make_definition(tenant, agent, "email", display_name="E"))
    found = await store.get_field_definition(tenant, agent, "email")
    assert found is not None and found.display_name == "E"
    assert await store.delete_field_definition(tenant, agent, "email") is True
    assert await store.get_field_definitions(tenant, agent) == []
    reads = backend.reads["get_field_definitions"]
    await store.get_field_definitions(tenant, other_agent)  # the other agent stayed cached
    assert backend.reads["get_field_definitions"] == reads


async def test_requirement_writes_invalidate_every_step_of_the_scenario(
    store: CachedProfileStore, tenant: UUID
) -> None:
    agent, scenario, step = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "email"))
    await store.save_scenario_requirement(
        make_requirement(tenant, agent, scenario, "phone", step_id=step)
    )
    assert len(await store.get_scenario_requirements(tenant, scenario)) == 1
    assert len(await store.get_scenario_requirements(tenant, scenario, step_id=step)) == 1
    await store.save_scenario_requirement(
        make_requirement(tenant, agent, scenario, "name", step_id=step)
    )
    assert len(await store.get_scenario_requirements(tenant, scenario, step_id=step)) == 2
    assert await store.delete_scenario_requirements(tenant, scenario) == 3
    assert await store.get_scenario_requirements(tenant, scenario) == []
    assert await store.get_scenario_requirements(tenant, scenario, step_id=step) == []


# ---------------------------------------------------------------------------------------
# layout, settings, lifecycle
# ---------------------------------------------------------------------------------------


async def test_every_key_of_a_tenant_shares_one_cluster_slot(
    store: CachedProfileStore, client: Redis, prefix: str, tenant: UUID
) -> None:
    await test_definitions_requirements_and_chains_are_cached(store, store.inner, tenant)
    profile = await new_profile(store, tenant)
    await _cache(store, profile)
    keys = [key.decode() async for key in client.scan_iter(match=f"{prefix}*")]
    kinds = {key[len(prefix) :].split(":", 1)[0] for key in keys}
    assert kinds == {
        "epoch",
        "profile",
        "pointers",
        "field_defs",
        "scenario_reqs",
        "deriv",
        "deriv_index",
    }
    assert all(f"{{{tenant}}}" in key for key in keys)
    assert len({key_slot(key.encode()) for key in keys}) == 1


def test_braces_in_the_key_prefix_are_refused(client: Redis) -> None:
    with pytest.raises(errors.ConfigurationError):
        CachedProfileStore(InMemoryProfileStore(), client, key_prefix="a{b}")
    with pytest.raises(errors.ConfigurationError):
        CachedProfileStore(InMemoryProfileStore(), client, cache_ttl=timedelta(0))


async def test_open_store_composes_the_cache_from_settings(prefix: str) -> None:
    settings = ccvault.load_settings(
        store_provider="inmemory",
        auto_encrypt_pii=False,
        cache_ttl_seconds=60,
        redis={"url": REDIS_URL, "key_prefix": prefix, "operation_timeout_seconds": 2},
    )
    async with ccvault.open_store(settings) as store:
        assert isinstance(store, CachedProfileStore)
        assert store.key_prefix == prefix and store.operation_timeout == 2
        tenant = uuid.uuid4()
        profile = await store.get_or_create(tenant, Channel.WEB, unique_user("web"))
        await store.update_field(tenant, profile.id, make_field())
        for _ in range(2):
            found = await store.get_by_id(tenant, profile.id)
            assert found is not None and "email" in found.fields
        assert sample("profile_cache_hits_total", tenant) == 1
        ttl = await store.redis.pttl(f"{prefix}profile:{{{tenant}}}:{profile.id}")
        assert 0 < ttl <= 60_000
    # the client it created was closed with it: no connection of its pool is open
    pool = store.redis.connection_pool
    assert store._closed and not pool._in_use_connections
    assert not any(connection.is_connected for connection in pool._available_connections)


def test_from_settings_builds_a_cluster_client_when_asked() -> None:
    from redis.asyncio.cluster import RedisCluster

    settings = ccvault.load_settings(
        store_provider="inmemory", redis={"url": "redis://127.0.0.1:1/0", "cluster": True}
    )
    store = CachedProfileStore.from_settings(InMemoryProfileStore(), settings)
    assert isinstance(store.redis, RedisCluster)


# hooks that only read and are deliberately not cached (forwarded as they are)
UNCACHED_READS = {
    # erasure by data subject reads the backend: it must find every copy, never a cached one
    "_find_subject_profiles",
    "_get_field",
    "_get_field_history",
    "_get_asset",
    "_get_asset_by_name",
    "_get_lineage_node",
    "_get_derived_items",
    "_check_has_dependents",
    "_export_profile",
    "_list_tenant_ids",
    "_count_items_by_status",
    "_estimate_items_by_status",
    "_list_profile_ids",
    # the merge log, and every definition of a tenant (merge reads its survivorship
    # policies, which must be current): read from the backend each time
    "_get_merge_log",
    "_get_tenant_field_definitions",
}


def test_every_write_hook_is_handled_by_the_cache() -> None:
    """A hook added to the store contract later must not silently skip invalidation."""
    from ccvault.store import ForwardingProfileStore, ProfileStore

    hooks = {
        name
        for name in vars(ProfileStore)
        if name.startswith("_") and not name.startswith("__") and callable(vars(ProfileStore)[name])
    }
    overridden = {name for name in vars(CachedProfileStore) if name in hooks}
    forwarded = {name for name in hooks if name in vars(ForwardingProfileStore)}
    unhandled = forwarded - overridden - UNCACHED_READS
    assert not unhandled, f"hooks neither cached/invalidated nor declared read-only: {unhandled}"


class RewritingStore(CountingStore):  # type: ignore[misc, valid-type]
    """Adds the key-rotation hook the in-memory provider lacks (via an in-place save), and
    can fail a write after it committed (its outcome then unknown to the caller)."""

    fail_after_commit = False

    async def _rewrite_field_payloads(
        self, tenant_id: UUID, profile_id: UUID, payloads: dict[UUID, Any]
    ) -> int:
        profile = await self.inner.get_by_id(tenant_id, profile_id)
        assert profile is not None
        count = 0
        for item in profile.fields.values():
            if item.id in payloads:
                item.value, item.source_metadata = payloads[item.id]
                count += 1
        await self.inner.save(profile)
        return count

    async def _update_field(self, *args: Any) -> Any:
        result = await super()._update_field(*args)
        if self.fail_after_commit:
            raise ConnectionResetError("connection lost after COMMIT")
        return result


async def test_rewrite_field_payloads_invalidates(client: Redis, prefix: str, tenant: UUID) -> None:
    backend = RewritingStore(InMemoryProfileStore())
    async with CachedProfileStore(backend, client, key_prefix=prefix) as store:
        profile = await new_profile(store, tenant)
        email = await store.get_field(tenant, profile.id, "email")
        assert email is not None
        await _cache(store, profile)
        assert (
            await store.rewrite_field_payloads(
                tenant, profile.id, {email.id: ("rotated", {"k": 2})}
            )
            == 1
        )
        found = await store.get_by_customer_id(tenant, profile.customer_id)
        assert found is not None and found.fields["email"].value == "rotated"


async def test_a_write_with_unknown_outcome_poisons_the_tenant(
    client: Redis, prefix: str, tenant: UUID
) -> None:
    backend = RewritingStore(InMemoryProfileStore())
    async with CachedProfileStore(backend, client, key_prefix=prefix) as store:
        profile = await new_profile(store, tenant)
        await _cache(store, profile)
        backend.fail_after_commit = True
        with pytest.raises(ConnectionResetError):
            await store.update_field(tenant, profile.id, make_field("email", "new@example.com"))
        backend.fail_after_commit = False
        assert not store.healthy
        found = await store.get_by_id(tenant, profile.id)  # recovers first, then reads
        assert found is not None and found.fields["email"].value == "new@example.com"
        assert store.healthy
        assert sample("profile_cache_invalidations_total", tenant, reason="redis_recovery") == 1


class PartiallyWritingStore(RewritingStore):  # type: ignore[misc, valid-type]
    """A backend that stores the save, then reports it could not undo part of it."""

    async def _save(self, profile: CustomerProfile) -> UUID:
        await super()._save(profile)
        raise errors.PartialWriteError("part of the save was stored")


async def test_a_partial_write_is_treated_as_written(
    client: Redis, prefix: str, tenant: UUID
) -> None:
    """PartialWriteError is never "nothing written": the cache drops what it held."""
    backend = PartiallyWritingStore(InMemoryProfileStore())
    async with CachedProfileStore(backend, client, key_prefix=prefix) as store:
        profile = await new_profile(store, tenant)
        await _cache(store, profile)
        profile.verification_level = VerificationLevel.KYC_COMPLETE
        with pytest.raises(errors.PartialWriteError):
            await store.save(profile)
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None and found.verification_level is VerificationLevel.KYC_COMPLETE
        again = await store.get_by_customer_id(tenant, profile.customer_id)
        assert again is not None and again.verification_level is VerificationLevel.KYC_COMPLETE


async def test_purge_erases_the_profile_from_redis(
    store: CachedProfileStore, client: Redis, prefix: str, tenant: UUID
) -> None:
    """Right to erasure: nothing of the purged profile stays in Redis, not even unreadable."""
    keep, gone = await new_profile(store, tenant), await new_profile(store, tenant)
    source = await store.get_field(tenant, gone.id, "email")
    assert source is not None
    derived = make_field(
        "domain", "example.com", source_item_id=source.id, source_item_type=SourceType.PROFILE_FIELD
    )
    await store.update_field(tenant, keep.id, derived)
    await _cache(store, keep, gone)
    channel, user = ident(gone)
    await store.get_by_channel_identity(tenant, channel, user)
    await store.get_derivation_chain(tenant, derived.id, "profile_field")

    async def dump() -> bytes:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        parts = []
        for key in keys:
            kind = await client.type(key)
            if kind == b"string":
                parts.append(key + (await client.get(key) or b""))
            elif kind == b"set":
                parts.append(key + b"".join(await client.smembers(key)))
            else:
                parts.append(
                    key + b"".join(b"".join(kv) for kv in (await client.hgetall(key)).items())
                )
        return b"".join(parts)

    traces = [
        str(gone.id).encode(),
        str(gone.customer_id).encode(),
        user.encode(),
    ]
    # (the surviving profile's derived field still names its source id, as in the database)
    before = await dump()
    assert all(trace in before for trace in traces[:2])
    assert await store.purge_profile(tenant, gone.id) is True
    left = await dump()
    for trace in traces:
        assert trace not in left, f"{trace!r} left in Redis"
    assert await store.get_by_channel_identity(tenant, channel, user) is None
    found = await store.get_by_id(tenant, keep.id)
    assert found is not None and "domain" in found.fields


async def test_a_pointer_to_a_profile_that_lost_the_lookup_is_repaired(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    """customer id C moves from P to Q: lookups by C stop hitting P and soon hit Q."""
    first = await new_profile(store, tenant)
    await _cache(store, first)
    moved = await store.get_by_id(tenant, first.id)
    assert moved is not None
    old_customer = moved.customer_id
    moved.customer_id = uuid.uuid4()
    await store.save(moved)
    await store.get_by_id(tenant, first.id)  # P's body cached again, with its new customer id
    second = await store.get_or_create(tenant, Channel.SMS, unique_user())
    second.customer_id = old_customer
    await store.save(second)
    for _ in range(3):
        found = await store.get_by_customer_id(tenant, old_customer)
        assert found is not None and found.id == second.id
    before = sum(backend.reads.values())
    found = await store.get_by_customer_id(tenant, old_customer)
    assert found is not None and found.id == second.id
    assert sum(backend.reads.values()) == before, "the pointer was never repaired"


async def test_the_chain_index_is_bounded(
    store: CachedProfileStore, backend: Any, client: Redis, prefix: str, tenant: UUID
) -> None:
    store.index_limit = 2
    profile = await new_profile(store, tenant)
    items = []
    for n in range(4):
        item = make_field(f"f{n}", n)
        await store.update_field(tenant, profile.id, item)
        items.append(item)
    for _ in range(2):
        for item in items:
            chain = await store.get_derivation_chain(tenant, item.id, "profile_field")
            assert [entry["id"] for entry in chain] == [item.id]
    assert await client.scard(f"{prefix}deriv_index:{{{tenant}}}") == 2
    assert backend.reads["get_derivation_chain"] == 6  # 2 cached, 2 always from the backend


# ---------------------------------------------------------------------------------------
# derivation chains: only closed chains are cached, so new items invalidate none
# ---------------------------------------------------------------------------------------


def _ids(chain: list[dict[str, Any]]) -> list[Any]:
    return [entry["id"] for entry in chain]


async def test_writing_new_items_keeps_cached_chains(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    profile = await new_profile(store, tenant)
    root = await store.get_field(tenant, profile.id, "email")
    assert root is not None
    derived = make_field(
        "domain", "example.com", source_item_id=root.id, source_item_type=SourceType.PROFILE_FIELD
    )
    await store.update_field(tenant, profile.id, derived)
    assert _ids(await store.get_derivation_chain(tenant, derived.id, "profile_field")) == [
        root.id,
        derived.id,
    ]
    reads = backend.reads["get_derivation_chain"]
    # new items of the tenant, and a new version superseding the chain's root
    await store.update_field(tenant, profile.id, make_field("nickname", "ada"))
    await store.add_asset(tenant, profile.id, make_asset("passport"))
    await store.update_field(tenant, profile.id, make_field("email", "b@example.com"))
    other = await new_profile(store, tenant)
    await store.update_field(tenant, other.id, make_field("phone", "+4915100"))
    for _ in range(2):
        chain = await store.get_derivation_chain(tenant, derived.id, "profile_field")
        assert _ids(chain) == [root.id, derived.id]
    assert backend.reads["get_derivation_chain"] == reads, "a new item invalidated the chain"
    # a write that changes stored items still resets the chains (here: delete_item)
    assert await store.delete_item(tenant, derived.id, "profile_field") is True
    assert await store.get_derivation_chain(tenant, derived.id, "profile_field") == []
    assert backend.reads["get_derivation_chain"] == reads + 1


async def test_a_chain_stopping_at_a_missing_item_is_completed_when_it_is_written(
    store: CachedProfileStore, backend: Any, tenant: UUID
) -> None:
    profile = await new_profile(store, tenant)
    missing = uuid.uuid4()
    derived = make_field(
        "domain", "example.com", source_item_id=missing, source_item_type=SourceType.PROFILE_FIELD
    )
    await store.update_field(tenant, profile.id, derived)
    unknown = make_field("nickname", "ada")
    for _ in range(2):  # neither chain is cached: the missing items may be written next
        chain = await store.get_derivation_chain(tenant, derived.id, "profile_field")
        assert _ids(chain) == [derived.id]
        assert await store.get_derivation_chain(tenant, unknown.id, "profile_field") == []
    assert backend.reads["get_derivation_chain"] == 4
    await store.update_field(tenant, profile.id, make_field("source", "x", id=missing))
    await store.update_field(tenant, profile.id, unknown)
    for _ in range(2):
        chain = await store.get_derivation_chain(tenant, derived.id, "profile_field")
        assert _ids(chain) == [missing, derived.id]
        assert _ids(await store.get_derivation_chain(tenant, unknown.id, "profile_field")) == [
            unknown.id
        ]
    assert backend.reads["get_derivation_chain"] == 6  # now closed: cached


async def test_behind_a_forwarding_wrapper_a_chain_stopped_at_a_missing_item_is_not_cached(
    client: Redis, prefix: str, tenant: UUID
) -> None:
    """Wrappers forward hook to hook, so the source links of the backend's chain reach the
    cache through any wrapper: a chain that stopped at a missing item is never cached."""
    from ccvault.store import ForwardingProfileStore

    inner = InMemoryProfileStore()
    async with CachedProfileStore(
        ForwardingProfileStore(inner), client, key_prefix=prefix
    ) as store:
        profile = await new_profile(store, tenant)
        missing = uuid.uuid4()
        derived = make_field(
            "domain",
            "example.com",
            source_item_id=missing,
            source_item_type=SourceType.PROFILE_FIELD,
        )
        await store.update_field(tenant, profile.id, derived)
        assert _ids(await store.get_derivation_chain(tenant, derived.id, "profile_field")) == [
            derived.id
        ]
        await store.update_field(tenant, profile.id, make_field("source", "x", id=missing))
        assert _ids(await store.get_derivation_chain(tenant, derived.id, "profile_field")) == [
            missing,
            derived.id,
        ]
