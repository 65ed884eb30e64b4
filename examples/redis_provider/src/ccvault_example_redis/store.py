"""The example Redis provider: each tenant is one JSON document under one Redis key.

Design (deliberately the simplest correct one, see the README):

* **Layout.** Everything a tenant owns (profiles, field and asset versions, identity and
  customer-id indexes, definitions, requirements, merge log, a write-order counter) is one
  orjson document at ``{key_prefix}tenant:{<tenant uuid>}``. The braces are a Redis Cluster
  hash tag, so a tenant's key always lives in one slot.
* **Reads** are one ``GET``: decode, compute the answer in Python, return fresh models.
* **Writes** are a read-modify-write under ``WATCH``/``MULTI``/``EXEC``: watch the key, read
  the document, run the hook's logic (which calls core's rule functions — ``plan_save``,
  ``plan_merge``, ``plan_unmerge``, ``link_outcome``, ``plan_definition_save``...), then
  ``SET`` the new document inside ``MULTI``. If anything else wrote the key since the
  ``WATCH`` (this process or another one), ``EXEC`` fails and the whole hook runs again on
  the new state. A hook that raises has sent no ``SET``: it wrote nothing. A hook whose
  document did not change sends no ``SET`` at all. After ``max_retries`` lost races the hook
  raises :class:`~ccvault.errors.ProviderUnavailableError` (nothing written; retry later).
* Every hook is therefore one atomic step on the tenant, as the contract asks, and two
  store instances (two processes) on one Redis and prefix see and serialize each other's
  writes through Redis itself: no in-process lock anywhere.
* ``_list_tenant_ids`` ``SCAN``\\ s the prefix with a bounded ``COUNT``.

Limits: a write rewrites the tenant's whole document and concurrent writers to one tenant
retry each other, so this suits small tenants (an example, a test backend), not big ones.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from ccvault import errors
from ccvault.batches import KeysetBatch, parse_orphans_position
from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    ItemStatus,
    ItemType,
    LineageEntry,
    MergeRecord,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
    SourceType,
    UnmergeResult,
)
from ccvault.rules.definitions import plan_definition_save, plan_requirement_save
from ccvault.rules.identity import link_outcome
from ccvault.rules.merge import MergeLogRequest, MergeSide, merge_record, plan_merge
from ccvault.rules.save import SaveState, StoredItem, identity_key, plan_save
from ccvault.rules.unmerge import UnmergeState, plan_unmerge
from ccvault.storage import corrupt_row
from ccvault.store import MergeWinner, ProfileStore, StoreRules
from ccvault_example_redis.settings import RedisExampleSettings

__all__ = ["RedisExampleProfileStore"]

_T = TypeVar("_T")
_IdentityKey = tuple[Channel, str]
_RequirementKey = tuple[UUID, UUID | None, UUID | None, str]
#: the profile's aggregate parts are stored as their own rows, not inside the profile
_AGGREGATE_PARTS = {"fields", "field_history", "assets", "asset_history"}


@dataclass
class _Profile:
    """The profile's own attributes (no fields or assets) and whether it is soft-deleted."""

    profile: CustomerProfile
    deleted: bool = False


@dataclass
class _Field:
    profile_id: UUID
    seq: int
    item: ProfileField


@dataclass
class _Asset:
    profile_id: UUID
    seq: int
    item: ProfileAsset


@dataclass
class _Tenant:
    """One tenant's document, decoded. ``seq`` numbers writes within the tenant."""

    profiles: dict[UUID, _Profile] = field(default_factory=dict)
    fields: dict[UUID, _Field] = field(default_factory=dict)
    assets: dict[UUID, _Asset] = field(default_factory=dict)
    # identities and customer ids owned by LIVE profiles only (an identity key holds the
    # channel user id, personal data: never in the repr)
    identities: dict[_IdentityKey, UUID] = field(default_factory=dict, repr=False)
    customers: dict[UUID, UUID] = field(default_factory=dict)
    definitions: dict[tuple[UUID, str], ProfileFieldDefinition] = field(default_factory=dict)
    requirements: dict[_RequirementKey, ScenarioFieldRequirement] = field(default_factory=dict)
    merges: dict[UUID, MergeRecord] = field(default_factory=dict)
    seq: int = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # --- the document -------------------------------------------------------------------

    def dump(self) -> bytes:
        return orjson.dumps(
            {
                "seq": self.seq,
                "profiles": [
                    {
                        "deleted": row.deleted,
                        "profile": row.profile.model_dump(mode="json", exclude=_AGGREGATE_PARTS),
                    }
                    for row in self.profiles.values()
                ],
                "fields": [
                    {
                        "profile_id": str(f.profile_id),
                        "seq": f.seq,
                        "item": f.item.model_dump(mode="json"),
                    }
                    for f in self.fields.values()
                ],
                "assets": [
                    {
                        "profile_id": str(a.profile_id),
                        "seq": a.seq,
                        "item": a.item.model_dump(mode="json"),
                    }
                    for a in self.assets.values()
                ],
                "identities": [
                    [channel.value, user_id, str(owner)]
                    for (channel, user_id), owner in self.identities.items()
                ],
                "customers": [[str(c), str(p)] for c, p in self.customers.items()],
                "definitions": [d.model_dump(mode="json") for d in self.definitions.values()],
                "requirements": [r.model_dump(mode="json") for r in self.requirements.values()],
                "merges": [m.model_dump(mode="json") for m in self.merges.values()],
            }
        )

    @classmethod
    def load(cls, raw: bytes | str | None) -> _Tenant:
        """The tenant's document, decoded. One the vault did not write (or a corrupted
        one) raises StorageError naming the part and attribute that is wrong, never the
        stored value: it may be personal data."""
        tenant = cls()
        if raw is None:
            return tenant
        part = "document"  # what is being read, for the error message (the whole JSON text)
        try:
            doc = orjson.loads(raw)
            part = "seq"
            tenant.seq = int(doc["seq"])
            part = "profiles"
            for row in doc["profiles"]:
                profile = CustomerProfile.model_validate(row["profile"])
                tenant.profiles[profile.id] = _Profile(profile=profile, deleted=row["deleted"])
            part = "fields"
            for row in doc["fields"]:
                item = ProfileField.model_validate(row["item"])
                tenant.fields[item.id] = _Field(UUID(row["profile_id"]), row["seq"], item)
            part = "assets"
            for row in doc["assets"]:
                asset = ProfileAsset.model_validate(row["item"])
                tenant.assets[asset.id] = _Asset(UUID(row["profile_id"]), row["seq"], asset)
            part = "identities"
            for channel, user_id, owner in doc["identities"]:
                tenant.identities[(Channel(channel), user_id)] = UUID(owner)
            part = "customers"
            for customer, owner in doc["customers"]:
                tenant.customers[UUID(customer)] = UUID(owner)
            part = "definitions"
            for raw_definition in doc["definitions"]:
                d = ProfileFieldDefinition.model_validate(raw_definition)
                tenant.definitions[(d.agent_id, d.name)] = d
            part = "requirements"
            for raw_requirement in doc["requirements"]:
                r = ScenarioFieldRequirement.model_validate(raw_requirement)
                tenant.requirements[(r.scenario_id, r.step_id, r.rule_id, r.field_name)] = r
            part = "merges"
            for raw_merge in doc["merges"]:
                m = MergeRecord.model_validate(raw_merge)
                tenant.merges[m.id] = m
            return tenant
        except (ValueError, KeyError, TypeError) as exc:  # pydantic's error is a ValueError
            # named by part, attribute and kind of error: never a value (personal data)
            error = corrupt_row("tenant document", part, exc)
        raise error  # outside the except block: not chained to the error (its text quotes)


def _stored(profile_id: UUID, item: ProfileField | ProfileAsset) -> StoredItem:
    return StoredItem(profile_id, item.name, item.status, item.superseded_by_id, item.superseded_at)


def _newest_first_field(row: _Field) -> tuple[datetime, int]:
    return (row.item.collected_at, row.seq)


def _newest_first_asset(row: _Asset) -> tuple[datetime, int]:
    return (row.item.uploaded_at, row.seq)


class RedisExampleProfileStore(ProfileStore):
    """A complete :class:`~ccvault.store.ProfileStore` whose only storage is Redis.

    Two instances built on the same ``url`` and ``key_prefix`` read and write the same data.
    """

    def __init__(
        self, settings: RedisExampleSettings | None = None, *, rules: StoreRules | None = None
    ) -> None:
        super().__init__(rules=rules)
        self.settings = settings or RedisExampleSettings()
        self._redis: Redis | None = None

    async def setup(self) -> None:
        """Connect and check the server answers. Idempotent; there is no schema to create."""
        if self._redis is None:
            self._redis = Redis.from_url(self.settings.url)
        try:
            await self._redis.ping()
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise errors.ProviderUnavailableError(f"Redis is unreachable: {exc}") from exc

    async def aclose(self) -> None:
        """Release the connection pool. Idempotent."""
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    # -------------------------------------------------------------------------------------
    # the storage primitives: one GET per read, one optimistic transaction per write
    # -------------------------------------------------------------------------------------

    def _key(self, tenant_id: UUID) -> str:
        return f"{self.settings.key_prefix}tenant:{{{tenant_id}}}"

    def _client(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(self.settings.url)
        return self._redis

    async def _read(self, tenant_id: UUID, op: Callable[[_Tenant], _T]) -> _T:
        try:
            raw = await self._client().get(self._key(tenant_id))
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise errors.ProviderUnavailableError(f"Redis is unreachable: {exc}") from exc
        return op(_Tenant.load(raw))

    async def _write(self, tenant_id: UUID, op: Callable[[_Tenant], _T]) -> _T:
        """Run ``op`` on the tenant's document and store the result, atomically: WATCH, GET,
        compute, MULTI/SET/EXEC; a lost race (EXEC refused) runs ``op`` again on fresh state."""
        key = self._key(tenant_id)
        try:
            async with self._client().pipeline(transaction=True) as pipe:
                for attempt in range(self.settings.max_retries):
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        tenant = _Tenant.load(raw)
                        result = op(tenant)  # raises before anything is sent: nothing written
                        new = tenant.dump()
                        if new == raw:
                            return result  # nothing changed: no write (reset unwatches)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(key, new)
                        await pipe.execute()
                        return result
                    except redis_errors.WatchError:
                        # lost a race: back off a little (jittered, growing) and recompute
                        await asyncio.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
                    finally:
                        await pipe.reset()  # type: ignore[no-untyped-call]
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise errors.ProviderUnavailableError(f"Redis is unreachable: {exc}") from exc
        raise errors.ProviderUnavailableError(
            f"tenant {tenant_id}: lost {self.settings.max_retries} write races in a row; try again"
        )

    # -------------------------------------------------------------------------------------
    # helpers (pure: called from inside ``op`` on the decoded document)
    # -------------------------------------------------------------------------------------

    def _live(self, tenant: _Tenant, profile_id: UUID) -> _Profile:
        row = tenant.profiles.get(profile_id)
        if row is None or row.deleted:
            raise errors.NotFoundError(f"profile {profile_id} not found")
        return row

    @staticmethod
    def _fields_of(tenant: _Tenant, profile_id: UUID) -> Iterator[_Field]:
        return (row for row in tenant.fields.values() if row.profile_id == profile_id)

    @staticmethod
    def _assets_of(tenant: _Tenant, profile_id: UUID) -> Iterator[_Asset]:
        return (row for row in tenant.assets.values() if row.profile_id == profile_id)

    def _active_field(self, tenant: _Tenant, profile_id: UUID, name: str) -> _Field | None:
        for row in self._fields_of(tenant, profile_id):
            if row.item.name == name and row.item.status is ItemStatus.ACTIVE:
                return row
        return None

    def _assemble(self, tenant: _Tenant, row: _Profile, include_history: bool) -> CustomerProfile:
        """A deep copy of the aggregate: ACTIVE fields/assets, history when asked."""
        profile = row.profile.model_copy(deep=True)
        fields = sorted(self._fields_of(tenant, profile.id), key=_newest_first_field, reverse=True)
        assets = sorted(self._assets_of(tenant, profile.id), key=_newest_first_asset, reverse=True)
        profile.fields = {
            f.item.name: f.item.model_copy(deep=True)
            for f in reversed(fields)
            if f.item.status is ItemStatus.ACTIVE
        }
        profile.assets = [
            a.item.model_copy(deep=True) for a in assets if a.item.status is ItemStatus.ACTIVE
        ]
        if include_history:
            history: dict[str, list[ProfileField]] = {}
            for f in fields:
                history.setdefault(f.item.name, []).append(f.item.model_copy(deep=True))
            profile.field_history = history
            profile.asset_history = [a.item.model_copy(deep=True) for a in assets]
        else:
            profile.field_history = {}
            profile.asset_history = []
        return profile

    def _find_item_exists(self, tenant: _Tenant, item_id: UUID, kind: SourceType) -> bool:
        if kind is SourceType.PROFILE_FIELD:
            return item_id in tenant.fields
        return item_id in tenant.assets

    # -------------------------------------------------------------------------------------
    # profiles
    # -------------------------------------------------------------------------------------

    async def _get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        def op(tenant: _Tenant) -> CustomerProfile | None:
            profile_id = tenant.customers.get(customer_id)
            if profile_id is None:
                return None
            return self._assemble(tenant, tenant.profiles[profile_id], include_history)

        return await self._read(tenant_id, op)

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        def op(tenant: _Tenant) -> CustomerProfile | None:
            row = tenant.profiles.get(profile_id)
            if row is None or row.deleted:
                return None
            return self._assemble(tenant, row, include_history)

        return await self._read(tenant_id, op)

    async def _get_by_channel_identity(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str, include_history: bool
    ) -> CustomerProfile | None:
        def op(tenant: _Tenant) -> CustomerProfile | None:
            profile_id = tenant.identities.get((channel, channel_user_id))
            if profile_id is None:
                return None
            return self._assemble(tenant, tenant.profiles[profile_id], include_history)

        return await self._read(tenant_id, op)

    async def _get_or_create(self, tenant_id: UUID, candidate: CustomerProfile) -> CustomerProfile:
        identity = candidate.channel_identities[0]

        def op(tenant: _Tenant) -> CustomerProfile:
            key = (identity.channel, identity.channel_user_id)
            owner = tenant.identities.get(key)
            if owner is not None:
                return self._assemble(tenant, tenant.profiles[owner], False)
            tenant.profiles[candidate.id] = _Profile(profile=candidate.model_copy(deep=True))
            tenant.identities[key] = candidate.id
            tenant.customers[candidate.customer_id] = candidate.id
            return self._assemble(tenant, tenant.profiles[candidate.id], False)

        return await self._write(tenant_id, op)

    async def _save(self, profile: CustomerProfile) -> UUID:
        def op(tenant: _Tenant) -> UUID:
            existing = tenant.profiles.get(profile.id)
            state = SaveState(
                exists=existing is not None,
                gone=existing is not None and existing.deleted,
                customer_owner=tenant.customers.get(profile.customer_id),
                identity_owners={
                    key: owner
                    for identity in profile.channel_identities
                    if (owner := tenant.identities.get(key := identity_key(identity)))
                },
                fields={
                    f.id: _stored(row.profile_id, row.item)
                    for f in profile.fields.values()
                    if (row := tenant.fields.get(f.id)) is not None
                },
                assets={
                    a.id: _stored(held.profile_id, held.item)
                    for a in profile.assets
                    if (held := tenant.assets.get(a.id)) is not None
                },
            )
            plan = plan_save(state, profile, self.now())
            # --- apply: nothing below can fail
            if existing is not None:
                for identity in existing.profile.channel_identities:
                    tenant.identities.pop(identity_key(identity), None)
                tenant.customers.pop(existing.profile.customer_id, None)
            base = plan.profile.model_copy(
                deep=True,
                update={
                    "channel_identities": list(plan.identities),
                    "consents": list(plan.consents),
                },
            )
            tenant.profiles[profile.id] = _Profile(profile=base)
            for identity in base.channel_identities:
                tenant.identities[identity_key(identity)] = profile.id
            tenant.customers[base.customer_id] = profile.id
            for item in plan.updated_fields:
                tenant.fields[item.id].item = item.model_copy(deep=True)
            for item in plan.new_fields:
                self._insert_field(tenant, profile.id, item, supersede=True, now=plan.now)
            for asset in plan.updated_assets:
                tenant.assets[asset.id].item = asset.model_copy(deep=True)
            for asset in plan.new_assets:
                self._insert_asset(tenant, profile.id, asset, supersede=False, now=plan.now)
            return profile.id

        return await self._write(profile.tenant_id, op)

    async def _delete(self, tenant_id: UUID, profile_id: UUID) -> bool:
        def op(tenant: _Tenant) -> bool:
            row = tenant.profiles.get(profile_id)
            if row is None or row.deleted:
                return False
            row.deleted = True
            row.profile.updated_at = self.now()
            for identity in row.profile.channel_identities:
                tenant.identities.pop((identity.channel, identity.channel_user_id), None)
            tenant.customers.pop(row.profile.customer_id, None)
            return True

        return await self._write(tenant_id, op)

    # -------------------------------------------------------------------------------------
    # fields
    # -------------------------------------------------------------------------------------

    def _insert_field(
        self,
        tenant: _Tenant,
        profile_id: UUID,
        item: ProfileField,
        *,
        supersede: bool,
        now: datetime,
    ) -> UUID:
        if item.id in tenant.fields:
            raise errors.ConflictError(f"field id {item.id} is already stored")
        active = self._active_field(tenant, profile_id, item.name)
        if not supersede:
            if active is not None and not active.item.is_expired(now):
                raise errors.ActiveFieldConflictError(
                    f"field {item.name!r} already has an ACTIVE version ({active.item.id})"
                )
            # every check passed: the profile's overdue versions close with the insert
            self._sweep(tenant, profile_id, now)
            active = None
        stored = item.model_copy(
            deep=True,
            update={"status": ItemStatus.ACTIVE, "superseded_by_id": None, "superseded_at": None},
        )
        if active is not None:
            active.item = active.item.model_copy(
                update={
                    "status": ItemStatus.SUPERSEDED,
                    "superseded_by_id": stored.id,
                    "superseded_at": now,
                    "updated_at": now,
                }
            )
        tenant.fields[stored.id] = _Field(profile_id=profile_id, seq=tenant.next_seq(), item=stored)
        return stored.id

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        def op(tenant: _Tenant) -> UUID:
            self._live(tenant, profile_id)
            return self._insert_field(
                tenant, profile_id, field, supersede=supersede_existing, now=field.updated_at
            )

        return await self._write(tenant_id, op)

    async def _get_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, status: ItemStatus | None
    ) -> ProfileField | None:
        def op(tenant: _Tenant) -> ProfileField | None:
            row = tenant.profiles.get(profile_id)
            if row is None or row.deleted:
                return None
            candidates = [
                f
                for f in self._fields_of(tenant, profile_id)
                if f.item.name == field_name and (status is None or f.item.status is status)
            ]
            if not candidates:
                return None
            return max(candidates, key=_newest_first_field).item.model_copy(deep=True)

        return await self._read(tenant_id, op)

    async def _get_field_history(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> list[ProfileField]:
        def op(tenant: _Tenant) -> list[ProfileField]:
            row = tenant.profiles.get(profile_id)
            if row is None or row.deleted:
                return []
            versions = [f for f in self._fields_of(tenant, profile_id) if f.item.name == field_name]
            versions.sort(key=_newest_first_field, reverse=True)
            return [f.item.model_copy(deep=True) for f in versions]

        return await self._read(tenant_id, op)

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        def op(tenant: _Tenant) -> int:
            return self._sweep(tenant, profile_id, now, limit)

        return await self._write(tenant_id, op)

    @staticmethod
    def _sweep(
        tenant: _Tenant, profile_id: UUID | None, now: datetime, limit: int | None = None
    ) -> int:
        count = 0
        for row in tenant.fields.values():
            if limit is not None and count >= limit:
                break
            if profile_id is not None and row.profile_id != profile_id:
                continue
            if row.item.status is ItemStatus.ACTIVE and row.item.is_expired(now):
                row.item = row.item.model_copy(
                    update={"status": ItemStatus.EXPIRED, "updated_at": now}
                )
                count += 1
        return count

    # -------------------------------------------------------------------------------------
    # assets
    # -------------------------------------------------------------------------------------

    def _insert_asset(
        self,
        tenant: _Tenant,
        profile_id: UUID,
        asset: ProfileAsset,
        *,
        supersede: bool,
        now: datetime,
    ) -> UUID:
        if asset.id in tenant.assets:
            raise errors.ConflictError(f"asset id {asset.id} is already stored")
        stored = asset.model_copy(
            deep=True,
            update={"status": ItemStatus.ACTIVE, "superseded_by_id": None, "superseded_at": None},
        )
        if supersede:
            for row in self._assets_of(tenant, profile_id):
                if row.item.name == asset.name and row.item.status is ItemStatus.ACTIVE:
                    row.item = row.item.model_copy(
                        update={
                            "status": ItemStatus.SUPERSEDED,
                            "superseded_by_id": stored.id,
                            "superseded_at": now,
                        }
                    )
        tenant.assets[stored.id] = _Asset(profile_id=profile_id, seq=tenant.next_seq(), item=stored)
        return stored.id

    async def _add_asset(
        self, tenant_id: UUID, profile_id: UUID, asset: ProfileAsset, supersede_existing: bool
    ) -> UUID:
        def op(tenant: _Tenant) -> UUID:
            self._live(tenant, profile_id)
            return self._insert_asset(
                tenant, profile_id, asset, supersede=supersede_existing, now=self.now()
            )

        return await self._write(tenant_id, op)

    async def _get_asset(
        self, tenant_id: UUID, profile_id: UUID, asset_id: UUID
    ) -> ProfileAsset | None:
        def op(tenant: _Tenant) -> ProfileAsset | None:
            row = tenant.assets.get(asset_id)
            profile = tenant.profiles.get(profile_id)
            if row is None or row.profile_id != profile_id or profile is None or profile.deleted:
                return None
            return row.item.model_copy(deep=True)

        return await self._read(tenant_id, op)

    async def _get_asset_by_name(
        self, tenant_id: UUID, profile_id: UUID, asset_name: str, status: ItemStatus | None
    ) -> ProfileAsset | None:
        def op(tenant: _Tenant) -> ProfileAsset | None:
            profile = tenant.profiles.get(profile_id)
            if profile is None or profile.deleted:
                return None
            candidates = [
                a
                for a in self._assets_of(tenant, profile_id)
                if a.item.name == asset_name and (status is None or a.item.status is status)
            ]
            if not candidates:
                return None
            return max(candidates, key=_newest_first_asset).item.model_copy(deep=True)

        return await self._read(tenant_id, op)

    # -------------------------------------------------------------------------------------
    # lineage
    # -------------------------------------------------------------------------------------

    async def _get_lineage_node(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType
    ) -> LineageEntry | None:
        def op(tenant: _Tenant) -> LineageEntry | None:
            if item_type is ItemType.PROFILE_FIELD:
                found = tenant.fields.get(item_id)
                if found is None:
                    return None
                return LineageEntry(
                    id=found.item.id,
                    type=ItemType.PROFILE_FIELD,
                    name=found.item.name,
                    source_metadata=found.item.model_copy(deep=True).source_metadata,
                    source_item_id=found.item.source_item_id,
                    source_item_type=found.item.source_item_type,
                )
            asset = tenant.assets.get(item_id)
            if asset is None:
                return None
            return LineageEntry(
                id=asset.item.id,
                type=ItemType.PROFILE_ASSET,
                name=asset.item.name,
                source_metadata={},
                source_item_id=asset.item.source_item_id,
                source_item_type=asset.item.source_item_type,
            )

        return await self._read(tenant_id, op)

    async def _get_derived_items(
        self, tenant_id: UUID, source_item_id: UUID
    ) -> tuple[list[ProfileField], list[ProfileAsset]]:
        def op(tenant: _Tenant) -> tuple[list[ProfileField], list[ProfileAsset]]:
            fields = sorted(
                (f for f in tenant.fields.values() if f.item.source_item_id == source_item_id),
                key=lambda f: f.seq,
            )
            assets = sorted(
                (a for a in tenant.assets.values() if a.item.source_item_id == source_item_id),
                key=lambda a: a.seq,
            )
            return (
                [f.item.model_copy(deep=True) for f in fields],
                [a.item.model_copy(deep=True) for a in assets],
            )

        return await self._read(tenant_id, op)

    def _has_dependents(self, tenant: _Tenant, item_id: UUID) -> bool:
        return any(
            f.item.source_item_id == item_id and f.item.status is ItemStatus.ACTIVE
            for f in tenant.fields.values()
        ) or any(
            a.item.source_item_id == item_id and a.item.status is ItemStatus.ACTIVE
            for a in tenant.assets.values()
        )

    async def _check_has_dependents(self, tenant_id: UUID, item_id: UUID) -> bool:
        def op(tenant: _Tenant) -> bool:
            return self._has_dependents(tenant, item_id)

        return await self._read(tenant_id, op)

    # -------------------------------------------------------------------------------------
    # channels and merge
    # -------------------------------------------------------------------------------------

    async def _link_channel(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        identity: ChannelIdentity,
        *,
        max_per_channel: int | None = None,
    ) -> bool:
        def op(tenant: _Tenant) -> bool:
            row = self._live(tenant, profile_id)
            key = (identity.channel, identity.channel_user_id)
            if not link_outcome(profile_id, tenant.identities.get(key), identity.channel):
                return False
            if max_per_channel is not None:
                # the optional per-channel limit (core passes it only when one is given)
                from ccvault.rules.identity import channel_eviction

                evicted = channel_eviction(
                    row.profile.channel_identities, identity.channel, max_per_channel
                )
                if evicted is not None:
                    # released as delete releases identities: it resolves to nobody
                    gone = (evicted.channel, evicted.channel_user_id)
                    row.profile.channel_identities = [
                        i
                        for i in row.profile.channel_identities
                        if (i.channel, i.channel_user_id) != gone
                    ]
                    tenant.identities.pop(gone, None)
            row.profile.channel_identities.append(identity.model_copy(deep=True))
            row.profile.updated_at = self.now()
            tenant.identities[key] = profile_id
            return True

        return await self._write(tenant_id, op)

    async def _merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        choose_winner: MergeWinner,
        log: MergeLogRequest | None = None,
    ) -> None:
        def op(tenant: _Tenant) -> None:
            source = self._live(tenant, source_profile_id)
            target = self._live(tenant, target_profile_id)
            now = self.now()
            if log is not None and log.merge_id in tenant.merges:
                raise errors.ConflictError(f"merge id {log.merge_id} is already taken")
            # the rule is core's: read the state, plan, then apply exactly the plan
            plan = plan_merge(
                MergeSide.from_profile(self._assemble(tenant, target, False)),
                MergeSide.from_profile(self._assemble(tenant, source, False)),
                now,
                choose_winner=choose_winner,
            )
            record = merge_record(
                tenant_id,
                plan,
                log or MergeLogRequest(),
                moved_field_ids=[f.item.id for f in self._fields_of(tenant, source_profile_id)],
                moved_asset_ids=[a.item.id for a in self._assets_of(tenant, source_profile_id)],
                moved_consents=source.profile.consents,
                source_identities=source.profile.channel_identities,
                target_identities=target.profile.channel_identities,
            )
            tenant.merges[record.id] = record.model_copy(deep=True)
            for entry in plan.supersede:
                loser = tenant.fields[entry.loser_id]
                loser.item = loser.item.model_copy(
                    update={
                        "status": ItemStatus.SUPERSEDED,
                        "superseded_by_id": entry.winner_id,
                        "superseded_at": now,
                        "updated_at": now,
                    }
                )
            for f in tenant.fields.values():
                if f.profile_id == source_profile_id:
                    f.profile_id = target_profile_id
            for a in tenant.assets.values():
                if a.profile_id == source_profile_id:
                    a.profile_id = target_profile_id
            held = {
                (i.channel, i.channel_user_id): i
                for i in (*target.profile.channel_identities, *source.profile.channel_identities)
            }
            target.profile.channel_identities = [
                held[placement.key].model_copy(update={"primary": placement.primary})
                for placement in plan.identities
            ]
            for placement in plan.moved_identities:
                tenant.identities[placement.key] = target_profile_id
            target.profile.consents.extend(c.model_copy(deep=True) for c in source.profile.consents)
            target.profile.updated_at = now
            source.profile.channel_identities = []
            source.profile.consents = []
            source.profile.updated_at = now
            source.deleted = True
            tenant.customers.pop(source.profile.customer_id, None)

        return await self._write(tenant_id, op)

    async def _unmerge(self, tenant_id: UUID, merge_id: UUID) -> UnmergeResult:
        def op(tenant: _Tenant) -> UnmergeResult:
            record = tenant.merges.get(merge_id)
            if record is None:
                raise errors.NotFoundError(f"merge {merge_id} not found")
            source_id, target_id = record.source_profile_id, record.target_profile_id
            ends = {source_id, target_id}
            source = tenant.profiles.get(source_id)
            target = tenant.profiles.get(target_id)
            if source is None:
                raise errors.NotFoundError(f"merge {merge_id} not found")
            state = UnmergeState(
                record=record.model_copy(deep=True),
                open_merges=tuple(
                    m.model_copy(deep=True)
                    for m in tenant.merges.values()
                    if m.id != merge_id
                    and m.unmerged_at is None
                    and {m.source_profile_id, m.target_profile_id} & ends
                ),
                target_live=target is not None and not target.deleted,
                source_live=not source.deleted,
                target_fields=tuple(f.item for f in self._fields_of(tenant, target_id)),
                source_fields=tuple(f.item for f in self._fields_of(tenant, source_id)),
                target_assets=tuple(a.item for a in self._assets_of(tenant, target_id)),
                source_assets=tuple(a.item for a in self._assets_of(tenant, source_id)),
                target_identities=tuple(target.profile.channel_identities) if target else (),
                source_identities=tuple(source.profile.channel_identities),
                target_consents=tuple(target.profile.consents) if target else (),
                source_consents=tuple(source.profile.consents),
            )
            plan = plan_unmerge(state, self.now())
            assert target is not None  # plan_unmerge refuses a target that is not live
            now = plan.now
            # the source's customer id must still be free among live profiles
            owner = tenant.customers.get(source.profile.customer_id)
            if owner is not None and owner != source_id:
                raise errors.ConflictError("the source's customer id is taken by a live profile")
            for field_id in plan.field_ids_to_source:
                tenant.fields[field_id].profile_id = source_id
            for asset_id in plan.asset_ids_to_source:
                tenant.assets[asset_id].profile_id = source_id
            for field_id in plan.reactivate_field_ids:
                row = tenant.fields[field_id]
                row.item = row.item.model_copy(
                    update={
                        "status": ItemStatus.ACTIVE,
                        "superseded_by_id": None,
                        "superseded_at": None,
                        "updated_at": now,
                    }
                )
            held = {(i.channel, i.channel_user_id): i for i in target.profile.channel_identities}
            moving = [u for u in plan.identities if u.to_source]
            flags = {u.key: u.primary for u in plan.identities if not u.to_source}
            leaving = {u.key for u in moving}
            target.profile.channel_identities = [
                i.model_copy(
                    update={"primary": flags.get((i.channel, i.channel_user_id), i.primary)}
                )
                for i in target.profile.channel_identities
                if (i.channel, i.channel_user_id) not in leaving
            ]
            source.profile.channel_identities = [
                *source.profile.channel_identities,
                *(held[u.key].model_copy(update={"primary": u.primary}) for u in moving),
            ]
            for u in moving:
                tenant.identities[u.key] = source_id
            target.profile.consents = [c.model_copy(deep=True) for c in plan.target_consents]
            source.profile.consents = [c.model_copy(deep=True) for c in plan.source_consents]
            target.profile.updated_at = now
            source.profile.updated_at = now
            source.deleted = False
            tenant.customers[source.profile.customer_id] = source_id
            tenant.merges[merge_id] = plan.record.model_copy(deep=True)
            return plan.result.model_copy(deep=True)

        return await self._write(tenant_id, op)

    async def _get_merge_log(self, tenant_id: UUID, profile_id: UUID) -> list[MergeRecord]:
        def op(tenant: _Tenant) -> list[MergeRecord]:
            return [
                m.model_copy(deep=True)
                for m in tenant.merges.values()
                if profile_id in (m.source_profile_id, m.target_profile_id)
            ]

        return await self._read(tenant_id, op)

    async def _get_tenant_field_definitions(self, tenant_id: UUID) -> list[ProfileFieldDefinition]:
        def op(tenant: _Tenant) -> list[ProfileFieldDefinition]:
            return [d.model_copy(deep=True) for d in tenant.definitions.values()]

        return await self._read(tenant_id, op)

    # -------------------------------------------------------------------------------------
    # field definitions
    # -------------------------------------------------------------------------------------

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        def op(tenant: _Tenant) -> list[ProfileFieldDefinition]:
            return [
                d.model_copy(deep=True)
                for (agent, _), d in tenant.definitions.items()
                if agent == agent_id and (d.enabled or not enabled_only)
            ]

        return await self._read(tenant_id, op)

    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        def op(tenant: _Tenant) -> ProfileFieldDefinition | None:
            found = tenant.definitions.get((agent_id, field_name))
            return None if found is None else found.model_copy(deep=True)

        return await self._read(tenant_id, op)

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        def op(tenant: _Tenant) -> UUID:
            key = (definition.agent_id, definition.name)
            by_id = next((d for d in tenant.definitions.values() if d.id == definition.id), None)
            plan = plan_definition_save(definition, by_id, tenant.definitions.get(key))
            tenant.definitions[key] = definition.model_copy(
                deep=True, update={"id": plan.id, "created_at": plan.created_at}
            )
            return plan.id

        return await self._write(definition.tenant_id, op)

    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        def op(tenant: _Tenant) -> bool:
            return tenant.definitions.pop((agent_id, field_name), None) is not None

        return await self._write(tenant_id, op)

    # -------------------------------------------------------------------------------------
    # scenario requirements
    # -------------------------------------------------------------------------------------

    async def _get_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> list[ScenarioFieldRequirement]:
        def op(tenant: _Tenant) -> list[ScenarioFieldRequirement]:
            return [
                r.model_copy(deep=True)
                for r in tenant.requirements.values()
                if r.scenario_id == scenario_id and r.step_id == step_id
            ]

        return await self._read(tenant_id, op)

    async def _save_scenario_requirement(self, requirement: ScenarioFieldRequirement) -> UUID:
        def op(tenant: _Tenant) -> UUID:
            key = (
                requirement.scenario_id,
                requirement.step_id,
                requirement.rule_id,
                requirement.field_name,
            )
            by_id = next((r for r in tenant.requirements.values() if r.id == requirement.id), None)
            plan = plan_requirement_save(requirement, by_id, tenant.requirements.get(key))
            tenant.requirements[key] = requirement.model_copy(
                deep=True, update={"id": plan.id, "created_at": plan.created_at}
            )
            return plan.id

        return await self._write(requirement.tenant_id, op)

    async def _delete_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> int:
        def op(tenant: _Tenant) -> int:
            doomed = [
                key
                for key, r in tenant.requirements.items()
                if r.scenario_id == scenario_id and (step_id is None or r.step_id == step_id)
            ]
            for key in doomed:
                del tenant.requirements[key]
            return len(doomed)

        return await self._write(tenant_id, op)

    # -------------------------------------------------------------------------------------
    # erasure, portability, hard delete, orphans, operations
    # -------------------------------------------------------------------------------------

    async def _purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        def op(tenant: _Tenant) -> bool:
            row = tenant.profiles.pop(profile_id, None)
            if row is None:
                return False
            for key, owner in list(tenant.identities.items()):
                if owner == profile_id:
                    del tenant.identities[key]
            for customer, owner in list(tenant.customers.items()):
                if owner == profile_id:
                    del tenant.customers[customer]
            for field_id in [i for i, f in tenant.fields.items() if f.profile_id == profile_id]:
                del tenant.fields[field_id]
            for asset_id in [i for i, a in tenant.assets.items() if a.profile_id == profile_id]:
                del tenant.assets[asset_id]
            for merge_id in [
                i
                for i, m in tenant.merges.items()
                if profile_id in (m.source_profile_id, m.target_profile_id)
            ]:
                del tenant.merges[merge_id]
            return True

        return await self._write(tenant_id, op)

    async def _export_profile(self, tenant_id: UUID, profile_id: UUID) -> CustomerProfile | None:
        def op(tenant: _Tenant) -> CustomerProfile | None:
            row = tenant.profiles.get(profile_id)
            if row is None:
                return None
            return self._assemble(tenant, row, True)

        return await self._read(tenant_id, op)

    async def _find_subject_profiles(
        self,
        tenant_id: UUID,
        channel: Channel | None,
        channel_user_id: str | None,
        customer_id: UUID | None,
    ) -> list[UUID]:
        # a soft-deleted profile keeps the identities it held (released): they count
        def op(tenant: _Tenant) -> list[UUID]:
            return [
                profile_id
                for profile_id, row in tenant.profiles.items()
                if (
                    row.profile.customer_id == customer_id
                    if channel is None
                    else any(
                        i.channel == channel and i.channel_user_id == channel_user_id
                        for i in row.profile.channel_identities
                    )
                )
            ]

        return await self._read(tenant_id, op)

    async def _erase_subject(
        self, tenant_id: UUID, profile_ids: list[UUID], merge_ids: list[UUID]
    ) -> int:
        # one WATCH/MULTI/EXEC write of the tenant document: all of it or nothing
        erasing = set(profile_ids)

        def op(tenant: _Tenant) -> int:
            touching = {
                merge_id
                for merge_id, m in tenant.merges.items()
                if {m.source_profile_id, m.target_profile_id} & erasing
            }
            if touching != set(merge_ids):
                raise errors.ConflictError("the merge log of the subject changed")
            erased = sum(tenant.profiles.pop(p, None) is not None for p in profile_ids)
            for held in [k for k, owner in tenant.identities.items() if owner in erasing]:
                del tenant.identities[held]
            for customer in [k for k, owner in tenant.customers.items() if owner in erasing]:
                del tenant.customers[customer]
            for item_id in [i for i, f in tenant.fields.items() if f.profile_id in erasing]:
                del tenant.fields[item_id]
            for item_id in [i for i, a in tenant.assets.items() if a.profile_id in erasing]:
                del tenant.assets[item_id]
            for merge_id in touching:
                del tenant.merges[merge_id]
            return erased

        return await self._write(tenant_id, op)

    async def _delete_item(self, tenant_id: UUID, item_id: UUID, item_type: ItemType) -> bool:
        def op(tenant: _Tenant) -> bool:
            table: dict[UUID, _Field] | dict[UUID, _Asset] = (
                tenant.fields if item_type is ItemType.PROFILE_FIELD else tenant.assets
            )
            if item_id not in table:
                return False
            if self._has_dependents(tenant, item_id):
                raise errors.DependentsError(
                    f"{item_type.value} {item_id} still has ACTIVE items derived from it"
                )
            del table[item_id]
            return True

        return await self._write(tenant_id, op)

    async def _mark_orphans_batch(self, tenant_id: UUID, now: datetime, limit: int) -> int:
        def op(tenant: _Tenant) -> int:
            count = 0
            for f in tenant.fields.values():
                if count >= limit:
                    return count
                if self._orphaned(
                    tenant, f.item.status, f.item.source_item_id, f.item.source_item_type
                ):
                    f.item = f.item.model_copy(
                        update={"status": ItemStatus.ORPHANED, "updated_at": now}
                    )
                    count += 1
            for a in tenant.assets.values():
                if count >= limit:
                    return count
                if self._orphaned(
                    tenant, a.item.status, a.item.source_item_id, a.item.source_item_type
                ):
                    a.item = a.item.model_copy(update={"status": ItemStatus.ORPHANED})
                    count += 1
            return count

        return await self._write(tenant_id, op)

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        # keyset pages in (table, id) order: "field:<uuid>", "asset:" (assets from the
        # start), "asset:<uuid>"; the example loads the whole tenant anyway, so the page
        # only bounds what one write changes and examines
        kind, last = parse_orphans_position(after)

        def op(tenant: _Tenant) -> KeysetBatch:
            examined = marked = 0
            for table_kind in ("field", "asset"):
                if kind == "asset" and table_kind == "field":
                    continue
                start = last if table_kind == kind else None
                table: dict[UUID, Any] = tenant.fields if table_kind == "field" else tenant.assets
                budget = limit - examined
                page = sorted(
                    item_id
                    for item_id, row in table.items()
                    if row.item.source_item_id is not None and (start is None or item_id > start)
                )[:budget]
                examined += len(page)
                for item_id in page:
                    row = table[item_id]
                    item = row.item
                    if not self._orphaned(
                        tenant, item.status, item.source_item_id, item.source_item_type
                    ):
                        continue
                    update: dict[str, Any] = {"status": ItemStatus.ORPHANED}
                    if table_kind == "field":
                        update["updated_at"] = now
                    row.item = item.model_copy(update=update)
                    marked += 1
                if len(page) == budget:
                    return KeysetBatch(marked, examined, f"{table_kind}:{page[-1]}")
            return KeysetBatch(marked, examined, None)

        return await self._write(tenant_id, op)

    def _orphaned(
        self,
        tenant: _Tenant,
        status: ItemStatus,
        source_id: UUID | None,
        source_type: SourceType | None,
    ) -> bool:
        if status is ItemStatus.ORPHANED or source_id is None:
            return False
        if source_type not in (SourceType.PROFILE_FIELD, SourceType.PROFILE_ASSET):
            return False
        return not self._find_item_exists(tenant, source_id, source_type)

    async def _list_tenant_ids(self) -> list[UUID]:
        prefix = f"{self.settings.key_prefix}tenant:{{"
        found: list[UUID] = []
        try:
            client = self._client()
            # SCAN in bounded batches: never a blocking KEYS over the whole keyspace
            async for key in client.scan_iter(match=f"{_glob_escape(prefix)}*}}", count=500):
                text = key.decode() if isinstance(key, bytes) else str(key)
                tenant_id = UUID(text[len(prefix) : -1])
                tenant = _Tenant.load(await client.get(key))
                if tenant.profiles:
                    found.append(tenant_id)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise errors.ProviderUnavailableError(f"Redis is unreachable: {exc}") from exc
        return found

    async def _count_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        def op(tenant: _Tenant) -> dict[str, dict[str, int]]:
            fields: dict[str, int] = {}
            assets: dict[str, int] = {}
            for f in tenant.fields.values():
                fields[f.item.status.value] = fields.get(f.item.status.value, 0) + 1
            for a in tenant.assets.values():
                assets[a.item.status.value] = assets.get(a.item.status.value, 0) + 1
            return {"fields": fields, "assets": assets}

        return await self._read(tenant_id, op)

    async def _list_profile_ids(self, tenant_id: UUID) -> list[UUID]:
        def op(tenant: _Tenant) -> list[UUID]:
            return list(tenant.profiles)

        return await self._read(tenant_id, op)

    async def _rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        def op(tenant: _Tenant) -> int:
            rows = [tenant.fields.get(field_id) for field_id in payloads]
            matched = [row for row in rows if row is not None and row.profile_id == profile_id]
            for row in matched:
                value, metadata = copy.deepcopy(payloads[row.item.id])
                row.item = row.item.model_copy(update={"value": value, "source_metadata": metadata})
            return len(matched)

        return await self._write(tenant_id, op)


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
