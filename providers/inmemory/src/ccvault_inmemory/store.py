"""The in-memory reference provider: dicts with real indexes, one lock, private copies.

Every hook runs its whole read-check-write sequence under one ``asyncio.Lock`` and never
awaits inside it, so each call is one atomic step: a supersede cannot be lost, a profile
has at most one ACTIVE version per field name, and concurrent ``get_or_create`` calls for
one identity see each other's profile. A write checks everything it needs before its first
change, so a refused write leaves the store exactly as it was.

Cost does not grow with the tenant: profiles are found through dict indexes (id, customer
id, channel identity), a profile's fields and assets through per-profile-and-name version
lists, lineage through a per-source index (``tables.py``), all updated in the same step as
the rows. Versions are stored as compact tuples (``records.py``); every model handed out is
built fresh on read, so callers can never change stored state by mutating a model they
passed in or got back.

Data lives only as long as the store object; nothing is persisted.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel

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
from ccvault.rules.identity import channel_eviction, link_outcome
from ccvault.rules.merge import MergeLogRequest, MergeSide, merge_record, plan_merge
from ccvault.rules.save import SaveState, StoredItem, identity_key, plan_save
from ccvault.rules.unmerge import UnmergeState, plan_unmerge
from ccvault.store import MergeWinner, ProfileStore, StoreRules
from ccvault_inmemory.records import ASSET, FIELD, Row, copy_json
from ccvault_inmemory.tables import ItemTable, Tenant, TenantProfile

__all__ = ["InMemoryProfileStore"]

_new = object.__new__
_SET_DICT: Any = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET: Any = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA: Any = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE: Any = BaseModel.__dict__["__pydantic_private__"].__set__
_NO_ITEMS: dict[str, Any] = {"fields": {}, "field_history": {}, "assets": [], "asset_history": []}


def _stored(row: Row[Any]) -> StoredItem:
    values, codec = row.values, row.codec
    return StoredItem(
        row.profile_id,
        row.name,
        row.status,
        values[codec.position["superseded_by_id"]],
        values[codec.position["superseded_at"]],
    )


def _base(profile: CustomerProfile, update: dict[str, Any] | None = None) -> CustomerProfile:
    """The profile row to store: a private copy without fields or assets (those live in
    the item tables)."""
    return profile.model_copy(update={**_NO_ITEMS, **(update or {})}).model_copy(deep=True)


def _copy_profile(base: CustomerProfile, items: dict[str, Any]) -> CustomerProfile:
    """A fresh profile from a stored row and freshly built items. Identities and consents
    hold only immutable values, so shallow copies of them are private copies."""
    data = dict(base.__dict__)
    data["channel_identities"] = [i.model_copy() for i in base.channel_identities]
    data["consents"] = [c.model_copy() for c in base.consents]
    data.update(items)
    profile = _new(CustomerProfile)
    _SET_DICT(profile, data)
    _SET_FIELDS_SET(profile, set(base.__pydantic_fields_set__) | items.keys())
    _SET_EXTRA(profile, None)
    _SET_PRIVATE(profile, None)
    return profile


class _Field(Row[ProfileField]):
    """A field row built outside a table, for code that plants a state (the contract
    suite's mutation tests: ``tenant.fields[item.id] = _Field(profile_id, seq, item)``)."""

    __slots__ = ()

    def __init__(self, profile_id: UUID, seq: int, item: ProfileField) -> None:
        super().__init__(FIELD, profile_id, seq, FIELD.pack(item))


def _by_seq(row: Row[Any]) -> int:
    return row.seq


def _newest_first(rows: Iterable[Row[Any]]) -> list[Row[Any]]:
    return sorted(rows, key=Row.newest_key, reverse=True)


class InMemoryProfileStore(ProfileStore):
    """A complete :class:`~ccvault.store.ProfileStore` held in process memory."""

    #: every optional capability of the contract suite (see ``ccvault_contract_tests``)
    capabilities: frozenset[str] = frozenset({"large_values", "nul_characters", "high_concurrency"})

    def __init__(self, *, rules: StoreRules | None = None) -> None:
        super().__init__(rules=rules)
        self._tenants: dict[UUID, Tenant] = {}
        self._lock = asyncio.Lock()
        # write order: breaks ties between equal timestamps, newest write first
        self._seq = itertools.count(1)

    def share_state_with(self, other: InMemoryProfileStore) -> None:
        """From now on read and write ``other``'s data, under ``other``'s lock: a second
        instance over the same backing state, as two processes over one database (the
        contract suite's ``other_store``; ``[providers.inmemory] shared_state``)."""
        self._tenants, self._lock, self._seq = other._tenants, other._lock, other._seq

    # -------------------------------------------------------------------------------------
    # helpers (called with the lock held, or from code that never awaits)
    # -------------------------------------------------------------------------------------

    def _tenant(self, tenant_id: UUID, *, create: bool = False) -> Tenant:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = Tenant()
            if create:
                self._tenants[tenant_id] = tenant
        return tenant

    def _live(self, tenant: Tenant, profile_id: UUID) -> TenantProfile:
        row = tenant.profiles.get(profile_id)
        if row is None or row.deleted:
            raise errors.NotFoundError(f"profile {profile_id} not found")
        return row

    @staticmethod
    def _active_field(tenant: Tenant, profile_id: UUID, name: str) -> Row[ProfileField] | None:
        return tenant.fields.active(profile_id, name)

    @staticmethod
    def _active_fields(tenant: Tenant, profile_id: UUID) -> list[Row[ProfileField]]:
        """The profile's ACTIVE field versions, oldest first."""
        active = []
        for rows in tenant.fields.names(profile_id).values():
            for row in reversed(rows):
                if row.status is ItemStatus.ACTIVE:
                    active.append(row)
                    break
        active.sort(key=Row.newest_key)
        return active

    def _assemble(
        self, tenant: Tenant, row: TenantProfile, include_history: bool
    ) -> CustomerProfile:
        """A fresh copy of the aggregate: ACTIVE fields/assets, history when asked."""
        profile_id = row.profile.id
        assets = _newest_first(tenant.assets.of_profile(profile_id))
        items: dict[str, Any] = {
            "fields": {r.name: r.item for r in self._active_fields(tenant, profile_id)},
            "assets": [a.item for a in assets if a.status is ItemStatus.ACTIVE],
            "field_history": {},
            "asset_history": [],
        }
        if include_history:
            versions = [_newest_first(rows) for rows in tenant.fields.names(profile_id).values()]
            versions.sort(key=lambda rows: rows[0].newest_key(), reverse=True)
            items["field_history"] = {rows[0].name: [r.item for r in rows] for rows in versions}
            items["asset_history"] = [a.item for a in assets]
        return _copy_profile(row.profile, items)

    # -------------------------------------------------------------------------------------
    # profiles
    # -------------------------------------------------------------------------------------

    async def _get_by_customer_id(
        self, tenant_id: UUID, customer_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            profile_id = tenant.customers.get(customer_id)
            if profile_id is None:
                return None
            return self._assemble(tenant, tenant.profiles[profile_id], include_history)

    async def _get_by_id(
        self, tenant_id: UUID, profile_id: UUID, include_history: bool
    ) -> CustomerProfile | None:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            row = tenant.profiles.get(profile_id)
            if row is None or row.deleted:
                return None
            return self._assemble(tenant, row, include_history)

    async def _get_by_channel_identity(
        self, tenant_id: UUID, channel: Channel, channel_user_id: str, include_history: bool
    ) -> CustomerProfile | None:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            profile_id = tenant.identities.get((channel, channel_user_id))
            if profile_id is None:
                return None
            return self._assemble(tenant, tenant.profiles[profile_id], include_history)

    async def _get_or_create(self, tenant_id: UUID, candidate: CustomerProfile) -> CustomerProfile:
        identity = candidate.channel_identities[0]
        async with self._lock:
            tenant = self._tenant(tenant_id, create=True)
            key = (identity.channel, identity.channel_user_id)
            owner = tenant.identities.get(key)
            if owner is not None:
                return self._assemble(tenant, tenant.profiles[owner], False)
            tenant.profiles[candidate.id] = TenantProfile(profile=_base(candidate))
            tenant.identities[key] = candidate.id
            tenant.customers[candidate.customer_id] = candidate.id
            return self._assemble(tenant, tenant.profiles[candidate.id], False)

    async def _save(self, profile: CustomerProfile) -> UUID:
        async with self._lock:
            tenant = self._tenant(profile.tenant_id, create=True)
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
                    f.id: _stored(row)
                    for f in profile.fields.values()
                    if (row := tenant.fields.get(f.id)) is not None
                },
                assets={
                    a.id: _stored(held)
                    for a in profile.assets
                    if (held := tenant.assets.get(a.id)) is not None
                },
            )
            plan = plan_save(state, profile, self.now())
            # the inserts' ids must be free (and distinct) before anything is written
            self._check_new_ids(tenant.fields, [f.id for f in plan.new_fields], "field")
            self._check_new_ids(tenant.assets, [a.id for a in plan.new_assets], "asset")
            # --- apply: nothing below can fail
            if existing is not None:
                for identity in existing.profile.channel_identities:
                    tenant.identities.pop(identity_key(identity), None)
                tenant.customers.pop(existing.profile.customer_id, None)
            base = _base(
                plan.profile,
                {"channel_identities": list(plan.identities), "consents": list(plan.consents)},
            )
            tenant.profiles[profile.id] = TenantProfile(profile=base)
            for identity in base.channel_identities:
                tenant.identities[identity_key(identity)] = profile.id
            tenant.customers[base.customer_id] = profile.id
            for item in plan.updated_fields:
                tenant.fields.rewrite(tenant.fields[item.id], FIELD.pack(item))
            for item in plan.new_fields:
                self._insert_field(tenant, profile.id, item, supersede=True, now=plan.now)
            for asset in plan.updated_assets:
                tenant.assets.rewrite(tenant.assets[asset.id], ASSET.pack(asset))
            for asset in plan.new_assets:
                self._insert_asset(tenant, profile.id, asset, supersede=False, now=plan.now)
            return profile.id

    @staticmethod
    def _check_new_ids(table: ItemTable[Any], ids: list[UUID], kind: str) -> None:
        if len(set(ids)) != len(ids):
            raise errors.ConflictError(f"one {kind} id is used twice in one save")
        for item_id in ids:
            if item_id in table:
                raise errors.ConflictError(f"{kind} id {item_id} is already stored")

    async def _delete(self, tenant_id: UUID, profile_id: UUID) -> bool:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            row = tenant.profiles.get(profile_id)
            if row is None or row.deleted:
                return False
            row.deleted = True
            row.profile.updated_at = self.now()
            for identity in row.profile.channel_identities:
                tenant.identities.pop((identity.channel, identity.channel_user_id), None)
            tenant.customers.pop(row.profile.customer_id, None)
            return True

    # -------------------------------------------------------------------------------------
    # fields
    # -------------------------------------------------------------------------------------

    def _insert_field(
        self,
        tenant: Tenant,
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
                    f"field {item.name!r} already has an ACTIVE version ({active.values[0]})"
                )
            # every check passed: the profile's overdue versions close with the insert
            self._sweep(tenant, profile_id, now)
            active = None
        values = FIELD.replace(
            FIELD.pack(item),
            {"status": ItemStatus.ACTIVE, "superseded_by_id": None, "superseded_at": None},
        )
        if active is not None:
            tenant.fields.change(
                active,
                status=ItemStatus.SUPERSEDED,
                superseded_by_id=item.id,
                superseded_at=now,
                updated_at=now,
            )
        tenant.fields.add(profile_id, next(self._seq), values)
        return item.id

    async def _update_field(
        self, tenant_id: UUID, profile_id: UUID, field: ProfileField, supersede_existing: bool
    ) -> UUID:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            self._live(tenant, profile_id)
            return self._insert_field(
                tenant, profile_id, field, supersede=supersede_existing, now=field.updated_at
            )

    async def _get_field(
        self, tenant_id: UUID, profile_id: UUID, field_name: str, status: ItemStatus | None
    ) -> ProfileField | None:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            row = tenant.profiles.get(profile_id)
            if row is None or row.deleted:
                return None
            if status is ItemStatus.ACTIVE:
                found = tenant.fields.active(profile_id, field_name)
                return None if found is None else found.item
            candidates = [
                f
                for f in tenant.fields.versions(profile_id, field_name)
                if status is None or f.status is status
            ]
            if not candidates:
                return None
            return max(candidates, key=Row.newest_key).item

    async def _get_field_history(
        self, tenant_id: UUID, profile_id: UUID, field_name: str
    ) -> list[ProfileField]:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            row = tenant.profiles.get(profile_id)
            if row is None or row.deleted:
                return []
            versions = _newest_first(tenant.fields.versions(profile_id, field_name))
            return [f.item for f in versions]

    async def _expire_stale_fields_batch(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime, limit: int
    ) -> int:
        async with self._lock:
            return self._sweep(self._tenant(tenant_id), profile_id, now, limit)

    @staticmethod
    def _sweep(
        tenant: Tenant, profile_id: UUID | None, now: datetime, limit: int | None = None
    ) -> int:
        """Expire the overdue ACTIVE versions of one profile (or of every profile), at most
        ``limit`` of them. Looks at one version per name: the ACTIVE one."""
        owners = tenant.fields.owners() if profile_id is None else [profile_id]
        expires_at = FIELD.expires_at
        count = 0
        for owner in owners:
            overdue = [
                row
                for name in tenant.fields.names(owner)
                if (row := tenant.fields.active(owner, name)) is not None
                and (ends := row.values[expires_at]) is not None
                and ends <= now
            ]
            if limit is not None:
                overdue = overdue[: limit - count]
            for row in overdue:
                tenant.fields.change(row, status=ItemStatus.EXPIRED, updated_at=now)
            count += len(overdue)
            if limit is not None and count >= limit:
                break
        return count

    # -------------------------------------------------------------------------------------
    # assets
    # -------------------------------------------------------------------------------------

    def _insert_asset(
        self,
        tenant: Tenant,
        profile_id: UUID,
        asset: ProfileAsset,
        *,
        supersede: bool,
        now: datetime,
    ) -> UUID:
        if asset.id in tenant.assets:
            raise errors.ConflictError(f"asset id {asset.id} is already stored")
        values = ASSET.replace(
            ASSET.pack(asset),
            {"status": ItemStatus.ACTIVE, "superseded_by_id": None, "superseded_at": None},
        )
        if supersede:
            for row in list(tenant.assets.versions(profile_id, asset.name)):
                if row.status is ItemStatus.ACTIVE:
                    tenant.assets.change(
                        row,
                        status=ItemStatus.SUPERSEDED,
                        superseded_by_id=asset.id,
                        superseded_at=now,
                    )
        tenant.assets.add(profile_id, next(self._seq), values)
        return asset.id

    async def _add_asset(
        self, tenant_id: UUID, profile_id: UUID, asset: ProfileAsset, supersede_existing: bool
    ) -> UUID:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            self._live(tenant, profile_id)
            return self._insert_asset(
                tenant, profile_id, asset, supersede=supersede_existing, now=self.now()
            )

    async def _get_asset(
        self, tenant_id: UUID, profile_id: UUID, asset_id: UUID
    ) -> ProfileAsset | None:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            row = tenant.assets.get(asset_id)
            profile = tenant.profiles.get(profile_id)
            if row is None or row.profile_id != profile_id or profile is None or profile.deleted:
                return None
            return row.item

    async def _get_asset_by_name(
        self, tenant_id: UUID, profile_id: UUID, asset_name: str, status: ItemStatus | None
    ) -> ProfileAsset | None:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            profile = tenant.profiles.get(profile_id)
            if profile is None or profile.deleted:
                return None
            candidates = [
                a
                for a in tenant.assets.versions(profile_id, asset_name)
                if status is None or a.status is status
            ]
            if not candidates:
                return None
            return max(candidates, key=Row.newest_key).item

    # -------------------------------------------------------------------------------------
    # lineage
    # -------------------------------------------------------------------------------------

    async def _get_lineage_node(
        self, tenant_id: UUID, item_id: UUID, item_type: ItemType
    ) -> LineageEntry | None:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            if item_type is ItemType.PROFILE_FIELD:
                found = tenant.fields.get(item_id)
                if found is None:
                    return None
                item = found.item  # a fresh model: its metadata is a private copy
                return LineageEntry(
                    id=item.id,
                    type=ItemType.PROFILE_FIELD,
                    name=item.name,
                    source_metadata=item.source_metadata,
                    source_item_id=item.source_item_id,
                    source_item_type=item.source_item_type,
                )
            held = tenant.assets.get(item_id)
            if held is None:
                return None
            asset = held.item
            return LineageEntry(
                id=asset.id,
                type=ItemType.PROFILE_ASSET,
                name=asset.name,
                source_metadata={},
                source_item_id=asset.source_item_id,
                source_item_type=asset.source_item_type,
            )

    async def _get_derived_items(
        self, tenant_id: UUID, source_item_id: UUID
    ) -> tuple[list[ProfileField], list[ProfileAsset]]:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            fields = sorted(tenant.fields.derived_from(source_item_id), key=lambda f: f.seq)
            assets = sorted(tenant.assets.derived_from(source_item_id), key=lambda a: a.seq)
            return ([f.item for f in fields], [a.item for a in assets])

    @staticmethod
    def _has_dependents(tenant: Tenant, item_id: UUID) -> bool:
        return any(
            f.status is ItemStatus.ACTIVE for f in tenant.fields.derived_from(item_id)
        ) or any(a.status is ItemStatus.ACTIVE for a in tenant.assets.derived_from(item_id))

    async def _check_has_dependents(self, tenant_id: UUID, item_id: UUID) -> bool:
        async with self._lock:
            return self._has_dependents(self._tenant(tenant_id), item_id)

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
        async with self._lock:
            tenant = self._tenant(tenant_id)
            row = self._live(tenant, profile_id)
            key = (identity.channel, identity.channel_user_id)
            if not link_outcome(profile_id, tenant.identities.get(key), identity.channel):
                return False
            evicted = channel_eviction(
                row.profile.channel_identities, identity.channel, max_per_channel
            )
            if evicted is not None:
                # released as delete releases identities: it resolves to nobody
                row.profile.channel_identities = [
                    i
                    for i in row.profile.channel_identities
                    if (i.channel, i.channel_user_id) != (evicted.channel, evicted.channel_user_id)
                ]
                tenant.identities.pop((evicted.channel, evicted.channel_user_id), None)
            row.profile.channel_identities.append(identity.model_copy(deep=True))
            row.profile.updated_at = self.now()
            tenant.identities[key] = profile_id
            return True

    async def _merge_profiles(
        self,
        tenant_id: UUID,
        source_profile_id: UUID,
        target_profile_id: UUID,
        choose_winner: MergeWinner,
        log: MergeLogRequest | None = None,
    ) -> None:
        async with self._lock:
            tenant = self._tenant(tenant_id)
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
            moved_fields = list(tenant.fields.of_profile(source_profile_id))
            moved_assets = list(tenant.assets.of_profile(source_profile_id))
            record = merge_record(
                tenant_id,
                plan,
                log or MergeLogRequest(),
                moved_field_ids=[f.values[0] for f in sorted(moved_fields, key=lambda r: r.seq)],
                moved_asset_ids=[a.values[0] for a in sorted(moved_assets, key=lambda r: r.seq)],
                moved_consents=source.profile.consents,
                source_identities=source.profile.channel_identities,
                target_identities=target.profile.channel_identities,
            )
            tenant.add_merge(record.model_copy(deep=True))
            for entry in plan.supersede:
                tenant.fields.change(
                    tenant.fields[entry.loser_id],
                    status=ItemStatus.SUPERSEDED,
                    superseded_by_id=entry.winner_id,
                    superseded_at=now,
                    updated_at=now,
                )
            for f in moved_fields:
                tenant.fields.move(f, target_profile_id)
            for a in moved_assets:
                tenant.assets.move(a, target_profile_id)
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

    async def _unmerge(self, tenant_id: UUID, merge_id: UUID) -> UnmergeResult:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            record = tenant.merges.get(merge_id)
            if record is None:
                raise errors.NotFoundError(f"merge {merge_id} not found")
            source_id, target_id = record.source_profile_id, record.target_profile_id
            source = tenant.profiles.get(source_id)
            target = tenant.profiles.get(target_id)
            if source is None:
                raise errors.NotFoundError(f"merge {merge_id} not found")
            open_merges = {
                m.id: m
                for end in (source_id, target_id)
                for m in tenant.merges_naming(end)
                if m.id != merge_id and m.unmerged_at is None
            }

            def items(table: ItemTable[Any], profile_id: UUID) -> tuple[Any, ...]:
                return tuple(r.item for r in sorted(table.of_profile(profile_id), key=_by_seq))

            state = UnmergeState(
                record=record.model_copy(deep=True),
                open_merges=tuple(m.model_copy(deep=True) for m in open_merges.values()),
                target_live=target is not None and not target.deleted,
                source_live=not source.deleted,
                target_fields=items(tenant.fields, target_id),
                source_fields=items(tenant.fields, source_id),
                target_assets=items(tenant.assets, target_id),
                source_assets=items(tenant.assets, source_id),
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
                tenant.fields.move(tenant.fields[field_id], source_id)
            for asset_id in plan.asset_ids_to_source:
                tenant.assets.move(tenant.assets[asset_id], source_id)
            for field_id in plan.reactivate_field_ids:
                tenant.fields.change(
                    tenant.fields[field_id],
                    status=ItemStatus.ACTIVE,
                    superseded_by_id=None,
                    superseded_at=None,
                    updated_at=now,
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
            # same id, same ends: the merges_of index stays as it is
            tenant.merges[merge_id] = plan.record.model_copy(deep=True)
            return plan.result.model_copy(deep=True)

    async def _get_merge_log(self, tenant_id: UUID, profile_id: UUID) -> list[MergeRecord]:
        async with self._lock:
            return [
                m.model_copy(deep=True) for m in self._tenant(tenant_id).merges_naming(profile_id)
            ]

    async def _get_tenant_field_definitions(self, tenant_id: UUID) -> list[ProfileFieldDefinition]:
        async with self._lock:
            return [d.model_copy(deep=True) for d in self._tenant(tenant_id).definitions.values()]

    # -------------------------------------------------------------------------------------
    # field definitions
    # -------------------------------------------------------------------------------------

    async def _get_field_definitions(
        self, tenant_id: UUID, agent_id: UUID, enabled_only: bool
    ) -> list[ProfileFieldDefinition]:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            return [
                d.model_copy(deep=True)
                for (agent, _), d in tenant.definitions.items()
                if agent == agent_id and (d.enabled or not enabled_only)
            ]

    async def _get_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> ProfileFieldDefinition | None:
        async with self._lock:
            found = self._tenant(tenant_id).definitions.get((agent_id, field_name))
            return None if found is None else found.model_copy(deep=True)

    async def _save_field_definition(self, definition: ProfileFieldDefinition) -> UUID:
        async with self._lock:
            tenant = self._tenant(definition.tenant_id, create=True)
            key = (definition.agent_id, definition.name)
            by_id = next((d for d in tenant.definitions.values() if d.id == definition.id), None)
            plan = plan_definition_save(definition, by_id, tenant.definitions.get(key))
            tenant.definitions[key] = definition.model_copy(
                deep=True, update={"id": plan.id, "created_at": plan.created_at}
            )
            return plan.id

    async def _delete_field_definition(
        self, tenant_id: UUID, agent_id: UUID, field_name: str
    ) -> bool:
        async with self._lock:
            return self._tenant(tenant_id).definitions.pop((agent_id, field_name), None) is not None

    # -------------------------------------------------------------------------------------
    # scenario requirements
    # -------------------------------------------------------------------------------------

    async def _get_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> list[ScenarioFieldRequirement]:
        async with self._lock:
            return [
                r.model_copy(deep=True)
                for r in self._tenant(tenant_id).requirements.values()
                if r.scenario_id == scenario_id and r.step_id == step_id
            ]

    async def _save_scenario_requirement(self, requirement: ScenarioFieldRequirement) -> UUID:
        async with self._lock:
            tenant = self._tenant(requirement.tenant_id, create=True)
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

    async def _delete_scenario_requirements(
        self, tenant_id: UUID, scenario_id: UUID, step_id: UUID | None
    ) -> int:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            doomed = [
                key
                for key, r in tenant.requirements.items()
                if r.scenario_id == scenario_id and (step_id is None or r.step_id == step_id)
            ]
            for key in doomed:
                del tenant.requirements[key]
            return len(doomed)

    # -------------------------------------------------------------------------------------
    # erasure, portability, hard delete, orphans, operations
    # -------------------------------------------------------------------------------------

    async def _purge_profile(self, tenant_id: UUID, profile_id: UUID) -> bool:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            row = tenant.profiles.pop(profile_id, None)
            if row is None:
                return False
            # a live profile owns exactly its identities and customer id (deleted: none)
            for identity in row.profile.channel_identities:
                key = (identity.channel, identity.channel_user_id)
                if tenant.identities.get(key) == profile_id:
                    del tenant.identities[key]
            if tenant.customers.get(row.profile.customer_id) == profile_id:
                del tenant.customers[row.profile.customer_id]
            tenant.fields.remove_profile(profile_id)
            tenant.assets.remove_profile(profile_id)
            for merge_id in list(tenant.merges_of.get(profile_id, {})):
                tenant.remove_merge(merge_id)
            return True

    async def _erase_subject(
        self, tenant_id: UUID, profile_ids: list[UUID], merge_ids: list[UUID]
    ) -> int:
        # erasure by data subject: the merge-log check and every removal under one lock
        # (_find_subject_profiles keeps ProfileStore's scan: an operator call, not a hot path)
        async with self._lock:
            tenant = self._tenant(tenant_id)
            touching = {m for p in profile_ids for m in tenant.merges_of.get(p, {})}
            if touching != set(merge_ids):
                raise errors.ConflictError("the merge log of the subject changed")
            erased = 0
            for profile_id in profile_ids:
                row = tenant.profiles.pop(profile_id, None)
                if row is None:
                    continue
                erased += 1
                for identity in row.profile.channel_identities:
                    key = (identity.channel, identity.channel_user_id)
                    if tenant.identities.get(key) == profile_id:
                        del tenant.identities[key]
                if tenant.customers.get(row.profile.customer_id) == profile_id:
                    del tenant.customers[row.profile.customer_id]
                tenant.fields.remove_profile(profile_id)
                tenant.assets.remove_profile(profile_id)
            for merge_id in touching:
                tenant.remove_merge(merge_id)
            return erased

    async def _export_profile(self, tenant_id: UUID, profile_id: UUID) -> CustomerProfile | None:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            row = tenant.profiles.get(profile_id)
            if row is None:
                return None
            return self._assemble(tenant, row, True)

    async def _delete_item(self, tenant_id: UUID, item_id: UUID, item_type: ItemType) -> bool:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            table: ItemTable[Any] = (
                tenant.fields if item_type is ItemType.PROFILE_FIELD else tenant.assets
            )
            row = table.get(item_id)
            if row is None:
                return False
            if self._has_dependents(tenant, item_id):
                raise errors.DependentsError(
                    f"{item_type.value} {item_id} still has ACTIVE items derived from it"
                )
            table.remove(row)
            return True

    async def _mark_orphans_batch(self, tenant_id: UUID, now: datetime, limit: int) -> int:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            count = 0
            tables: tuple[tuple[ItemTable[Any], bool], ...] = (
                (tenant.fields, True),
                (tenant.assets, False),
            )
            for table, stamp in tables:
                for source in table.sources():
                    orphans = [
                        row for row in table.derived_from(source) if self._orphaned(tenant, row)
                    ][: limit - count]
                    for row in orphans:
                        if stamp:
                            table.change(row, status=ItemStatus.ORPHANED, updated_at=now)
                        else:
                            table.change(row, status=ItemStatus.ORPHANED)
                    count += len(orphans)
                    if count >= limit:
                        return count
            return count

    async def _mark_orphans_page(
        self, tenant_id: UUID, now: datetime, limit: int, after: str | None
    ) -> KeysetBatch:
        # keyset pages in (table, id) order, positions as the PostgreSQL provider's:
        # "field:<uuid>", "asset:" (assets from the start), "asset:<uuid>"; a page that runs
        # out of derived fields goes on with the assets, with what is left of the limit.
        # The reference sorts a table's derived items per page: in-memory tenants are small
        kind, last = parse_orphans_position(after)
        examined = marked = 0
        resume: str | None = None
        async with self._lock:
            tenant = self._tenant(tenant_id)
            for table_kind in ("field", "asset"):
                if kind == "asset" and table_kind == "field":
                    continue
                table: ItemTable[Any] = tenant.fields if table_kind == "field" else tenant.assets
                start = last if table_kind == kind else None
                budget = limit - examined
                derived = sorted(
                    (
                        row
                        for source in table.sources()
                        for row in table.derived_from(source)
                        if start is None or row.values[0] > start
                    ),
                    key=lambda row: row.values[0],
                )[:budget]
                examined += len(derived)
                for row in derived:
                    if not self._orphaned(tenant, row):
                        continue
                    if table_kind == "field":
                        table.change(row, status=ItemStatus.ORPHANED, updated_at=now)
                    else:
                        table.change(row, status=ItemStatus.ORPHANED)
                    marked += 1
                if len(derived) == budget:
                    resume = f"{table_kind}:{derived[-1].values[0]}" if derived else "asset:"
                    break
        return KeysetBatch(marked=marked, examined=examined, resume_after=resume)

    @staticmethod
    def _orphaned(tenant: Tenant, row: Row[Any]) -> bool:
        """Not ORPHANED yet, and its profile_field/profile_asset source is gone."""
        if row.status is ItemStatus.ORPHANED:
            return False
        kind = row.values[row.codec.position["source_item_type"]]
        if kind is SourceType.PROFILE_FIELD:
            return row.source_id not in tenant.fields
        if kind is SourceType.PROFILE_ASSET:
            return row.source_id not in tenant.assets
        return False

    async def _list_tenant_ids(self) -> list[UUID]:
        async with self._lock:
            return [tid for tid, tenant in self._tenants.items() if tenant.profiles]

    async def _count_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            fields: dict[str, int] = {}
            assets: dict[str, int] = {}
            for f in tenant.fields.values():
                fields[f.status.value] = fields.get(f.status.value, 0) + 1
            for a in tenant.assets.values():
                assets[a.status.value] = assets.get(a.status.value, 0) + 1
            return {"fields": fields, "assets": assets}

    async def _list_profile_ids(self, tenant_id: UUID) -> list[UUID]:
        async with self._lock:
            return list(self._tenant(tenant_id).profiles)

    async def _rewrite_field_payloads(
        self,
        tenant_id: UUID,
        profile_id: UUID,
        payloads: dict[UUID, tuple[Any, dict[str, Any]]],
    ) -> int:
        async with self._lock:
            tenant = self._tenant(tenant_id)
            rows = [tenant.fields.get(field_id) for field_id in payloads]
            matched = [row for row in rows if row is not None and row.profile_id == profile_id]
            for row in matched:
                value, metadata = payloads[row.values[0]]
                tenant.fields.change(
                    row, value=copy_json(copy.deepcopy(value)), source_metadata=copy_json(metadata)
                )
            return len(matched)
