"""The in-memory provider's indexes agree with a full scan of its rows, whatever happens.

Seeded random sequences of public operations (creates, saves, field and asset writes with
and without supersede, deletes, merges, unmerges, identity links with eviction, item
deletes, purges, expiry sweeps, orphan marking, payload rewrites), refused ones included,
on two tenants. After every operation each index is compared with what a brute-force scan
of the stored rows says it must hold, and every lookup the store answers through an index
is compared with the scan's answer. A correctness test: nothing here is timed.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    ItemStatus,
    ProfileAsset,
    ProfileField,
    SourceType,
)
from ccvault_inmemory import InMemoryProfileStore
from ccvault_inmemory.tables import ItemTable, Tenant

BASE = datetime(2026, 1, 1, tzinfo=UTC)
TENANTS = (UUID(int=1), UUID(int=2))
NAMES = ("email", "phone", "city", "plan")
ASSET_NAMES = ("avatar", "contract")
USERS = tuple(f"user-{n}" for n in range(8))
CHANNELS = (Channel.WEB, Channel.EMAIL, Channel.SMS)


class ClockedStore(InMemoryProfileStore):
    """The store with a clock the test moves: every timestamp derives from ``BASE``."""

    clock = BASE

    def now(self) -> datetime:
        return self.clock


def _uuid(rng: random.Random) -> UUID:
    return UUID(int=rng.getrandbits(128), version=4)


# ---------------------------------------------------------------------------------------
# the brute-force view of the stored rows
# ---------------------------------------------------------------------------------------


def _check_table(table: ItemTable[Any], one_active_per_name: bool) -> None:
    rows = dict(table.items())
    assert all(row.values[0] == item_id for item_id, row in rows.items())
    by_profile: dict[UUID, dict[str, list[UUID]]] = {}
    for row in sorted(rows.values(), key=lambda r: r.seq):
        by_profile.setdefault(row.profile_id, {}).setdefault(row.name, []).append(row.values[0])
    indexed = {
        owner: {name: [r.values[0] for r in table.versions(owner, name)] for name in names}
        for owner in table.owners()
        if (names := table.names(owner))
    }
    assert indexed == by_profile
    assert sorted(table.owners()) == sorted(by_profile)
    for owner, names in by_profile.items():
        assert sorted(r.values[0] for r in table.of_profile(owner)) == sorted(
            i for ids in names.values() for i in ids
        )
        if one_active_per_name:
            for name, ids in names.items():
                active = [i for i in ids if rows[i].status is ItemStatus.ACTIVE]
                assert len(active) <= 1
                found = table.active(owner, name)
                assert (found.values[0] if found else None) == (active[0] if active else None)
    by_source: dict[UUID, set[UUID]] = {}
    for row in rows.values():
        if row.source_id is not None:
            by_source.setdefault(row.source_id, set()).add(row.values[0])
    assert {s: {r.values[0] for r in table.derived_from(s)} for s in table.sources()} == by_source


def _check_tenant(tenant: Tenant) -> None:
    _check_table(tenant.fields, one_active_per_name=True)
    _check_table(tenant.assets, one_active_per_name=False)
    live = {pid: row.profile for pid, row in tenant.profiles.items() if not row.deleted}
    identities = {
        (i.channel, i.channel_user_id): pid
        for pid, profile in live.items()
        for i in profile.channel_identities
    }
    assert tenant.identities == identities
    assert tenant.customers == {profile.customer_id: pid for pid, profile in live.items()}
    merges_of: dict[UUID, set[UUID]] = {}
    for merge in tenant.merges.values():
        for end in (merge.source_profile_id, merge.target_profile_id):
            merges_of.setdefault(end, set()).add(merge.id)
    assert {pid: set(ids) for pid, ids in tenant.merges_of.items()} == merges_of
    # every item belongs to a profile the tenant still holds
    assert set(tenant.fields.owners()) <= set(tenant.profiles)
    assert set(tenant.assets.owners()) <= set(tenant.profiles)


async def _check_lookups(store: InMemoryProfileStore, tenant_id: UUID) -> None:
    """What the store's hooks answer through its indexes equals the brute-force answer
    (the hooks themselves: the public methods also apply core's presentation rules)."""
    tenant = store._tenant(tenant_id)
    for pid, row in tenant.profiles.items():
        if row.deleted:
            assert await store._get_by_id(tenant_id, pid, False) is None
            continue
        active = {
            r.name: r.values[0]
            for r in tenant.fields.values()
            if r.profile_id == pid and r.status is ItemStatus.ACTIVE
        }
        by_customer = await store._get_by_customer_id(tenant_id, row.profile.customer_id, False)
        assert by_customer is not None and by_customer.id == pid
        assert {name: f.id for name, f in by_customer.fields.items()} == active
        assets = {
            r.values[0]
            for r in tenant.assets.values()
            if r.profile_id == pid and r.status is ItemStatus.ACTIVE
        }
        assert {a.id for a in by_customer.assets} == assets
        for identity in row.profile.channel_identities:
            found = await store._get_by_channel_identity(
                tenant_id, identity.channel, identity.channel_user_id, False
            )
            assert found is not None and found.id == pid
        full = await store._get_by_id(tenant_id, pid, True)
        assert full is not None
        history = {name: [f.id for f in versions] for name, versions in full.field_history.items()}
        scanned: dict[str, list[tuple[Any, int, UUID]]] = {}
        for r in tenant.fields.values():
            if r.profile_id == pid:
                scanned.setdefault(r.name, []).append((*r.newest_key(), r.values[0]))
        assert history == {
            name: [i for *_, i in sorted(keys, reverse=True)] for name, keys in scanned.items()
        }
    for source in {r.source_id for r in tenant.fields.values() if r.source_id is not None}:
        fields, assets = await store._get_derived_items(tenant_id, source)
        assert {f.id for f in fields} == {
            r.values[0] for r in tenant.fields.values() if r.source_id == source
        }
        assert {a.id for a in assets} == {
            r.values[0] for r in tenant.assets.values() if r.source_id == source
        }


# ---------------------------------------------------------------------------------------
# the random operations
# ---------------------------------------------------------------------------------------


class World:
    def __init__(self, store: ClockedStore, rng: random.Random) -> None:
        self.store = store
        self.rng = rng
        self.merges: list[tuple[UUID, UUID]] = []  # (tenant, merge id)

    def tenant(self) -> UUID:
        return self.rng.choice(TENANTS)

    def profile_id(self, tenant_id: UUID) -> UUID:
        held = list(self.store._tenant(tenant_id).profiles)
        if held and self.rng.random() < 0.9:
            return self.rng.choice(held)
        return _uuid(self.rng)

    def item_id(self, tenant_id: UUID) -> UUID:
        tenant = self.store._tenant(tenant_id)
        held = [*tenant.fields, *tenant.assets]
        if held and self.rng.random() < 0.85:
            return self.rng.choice(held)
        return _uuid(self.rng)

    def field(self, tenant_id: UUID) -> ProfileField:
        source = self.item_id(tenant_id) if self.rng.random() < 0.4 else None
        kind = None
        if source is not None:
            kind = (
                SourceType.PROFILE_FIELD
                if source in self.store._tenant(tenant_id).fields
                else (SourceType.PROFILE_ASSET)
            )
        at = self.store.clock - timedelta(seconds=self.rng.randrange(0, 5))
        return ProfileField(
            id=_uuid(self.rng),
            name=self.rng.choice(NAMES),
            value={"v": self.rng.randrange(100), "list": [1, 2]},
            source_metadata={"n": self.rng.randrange(10)},
            source_item_id=source,
            source_item_type=kind,
            collected_at=at,
            updated_at=self.store.clock,
            expires_at=(
                self.store.clock + timedelta(seconds=self.rng.randrange(1, 30))
                if self.rng.random() < 0.3
                else None
            ),
        )

    def asset(self, tenant_id: UUID) -> ProfileAsset:
        source = self.item_id(tenant_id) if self.rng.random() < 0.4 else None
        kind = None
        if source is not None:
            kind = (
                SourceType.PROFILE_FIELD
                if source in self.store._tenant(tenant_id).fields
                else (SourceType.PROFILE_ASSET)
            )
        return ProfileAsset(
            id=_uuid(self.rng),
            name=self.rng.choice(ASSET_NAMES),
            asset_type="image",
            storage_provider="s3",
            storage_path=f"bucket/{self.rng.randrange(1000)}",
            uploaded_at=self.store.clock,
            source_item_id=source,
            source_item_type=kind,
            verification_result={"ok": True},
        )

    def identity(self) -> ChannelIdentity:
        return ChannelIdentity(
            channel=self.rng.choice(CHANNELS),
            channel_user_id=self.rng.choice(USERS),
            primary=self.rng.random() < 0.3,
            created_at=self.store.clock,
        )

    # --- the operations ---------------------------------------------------------------

    async def get_or_create(self) -> Any:
        identity = self.identity()
        return await self.store.get_or_create(
            self.tenant(), identity.channel, identity.channel_user_id
        )

    async def update_field(self) -> Any:
        t = self.tenant()
        return await self.store.update_field(
            t, self.profile_id(t), self.field(t), supersede_existing=self.rng.random() < 0.7
        )

    async def add_asset(self) -> Any:
        t = self.tenant()
        return await self.store.add_asset(
            t, self.profile_id(t), self.asset(t), supersede_existing=self.rng.random() < 0.5
        )

    async def save(self) -> Any:
        t = self.tenant()
        found = await self.store.get_by_id(t, self.profile_id(t))
        if found is None or self.rng.random() < 0.2:
            found = CustomerProfile(
                tenant_id=t,
                channel_identities=[self.identity()],
                created_at=self.store.clock,
                updated_at=self.store.clock,
            )
        if self.rng.random() < 0.5:
            item = self.field(t)
            found.fields[item.name] = item
        if self.rng.random() < 0.3 and found.fields:
            name = self.rng.choice(list(found.fields))
            found.fields[name] = found.fields[name].model_copy(update={"value": "edited"})
        if self.rng.random() < 0.3:
            found.assets.append(self.asset(t))
        if self.rng.random() < 0.2:
            found.channel_identities.append(self.identity())
        return await self.store.save(found)

    async def delete(self) -> Any:
        t = self.tenant()
        return await self.store.delete(t, self.profile_id(t))

    async def merge(self) -> Any:
        t = self.tenant()
        merge_id = _uuid(self.rng)
        done = await self.store.merge_profiles(
            t, self.profile_id(t), self.profile_id(t), merge_id=merge_id
        )
        self.merges.append((t, merge_id))
        return done

    async def unmerge(self) -> Any:
        if not self.merges:
            return None
        t, merge_id = self.rng.choice(self.merges)
        return await self.store.unmerge(t, merge_id)

    async def link(self) -> Any:
        t = self.tenant()
        return await self.store.link_channel(
            t, self.profile_id(t), self.identity(), max_per_channel=self.rng.choice((None, 1, 2))
        )

    async def delete_item(self) -> Any:
        t = self.tenant()
        item_id = self.item_id(t)
        kind = "profile_field" if item_id in self.store._tenant(t).fields else "profile_asset"
        return await self.store.delete_item(t, item_id, kind)

    async def purge(self) -> Any:
        t = self.tenant()
        return await self.store.purge_profile(t, self.profile_id(t))

    async def expire(self) -> Any:
        t = self.tenant()
        profile = self.profile_id(t) if self.rng.random() < 0.5 else None
        return await self.store.expire_stale_fields(t, profile, batch_size=2)

    async def orphans(self) -> Any:
        return await self.store.mark_orphans(self.tenant(), batch_size=2)

    async def rewrite(self) -> Any:
        t = self.tenant()
        profile = self.profile_id(t)
        ids = [r.values[0] for r in self.store._tenant(t).fields.of_profile(profile)][:3]
        return await self.store.rewrite_field_payloads(
            t, profile, {i: ({"new": [1, {"deep": True}]}, {"k": "v"}) for i in ids}
        )

    def operations(self) -> list[tuple[Callable[[], Awaitable[Any]], int]]:
        return [
            (self.get_or_create, 6),
            (self.update_field, 10),
            (self.add_asset, 4),
            (self.save, 5),
            (self.delete, 1),
            (self.merge, 2),
            (self.unmerge, 2),
            (self.link, 3),
            (self.delete_item, 2),
            (self.purge, 1),
            (self.expire, 1),
            (self.orphans, 1),
            (self.rewrite, 1),
        ]


@pytest.mark.parametrize("seed", range(6))
async def test_indexes_match_a_full_scan_after_random_operations(seed: int) -> None:
    rng = random.Random(seed)
    store = ClockedStore()
    world = World(store, rng)
    operations, weights = zip(*world.operations(), strict=True)
    done = refused = 0
    for step in range(250):
        store.clock = BASE + timedelta(seconds=step)
        operation = rng.choices(operations, weights)[0]
        try:
            await operation()
            done += 1
        except errors.VaultError:
            refused += 1
        for tenant_id in TENANTS:
            _check_tenant(store._tenant(tenant_id))
        if step % 10 == 0:
            for tenant_id in TENANTS:
                await _check_lookups(store, tenant_id)
    # the sequence did real work and hit refusals too (else it proves little)
    assert done > 100 and refused > 0, (done, refused)
    assert sum(len(store._tenant(t).fields) for t in TENANTS) > 20
