"""The in-memory tables of one tenant and the indexes that keep every operation local.

``ItemTable`` holds the versions of fields (or assets) of a tenant by id, and two indexes
kept in step with every write: per profile and name, the versions in write order (field
operations cost O(versions of that field), reads of a profile O(its own items)); per source
id, the items naming it as their source (lineage lookups, dependents, orphans). Every
change goes through the table's methods, which update the rows and both indexes together;
the provider checks everything a write needs before its first change, so a refused write
changes nothing (there is nothing to roll back).

The profile-level indexes (identity -> profile, customer id -> profile, profile -> merges)
live in ``Tenant``; the store updates them beside the profile rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel

from ccvault.models import (
    Channel,
    CustomerProfile,
    ItemStatus,
    MergeRecord,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
)
from ccvault_inmemory.records import ASSET, FIELD, Codec, Row

__all__ = ["IdentityKey", "ItemTable", "RequirementKey", "Tenant", "TenantProfile"]

M = TypeVar("M", bound=BaseModel)

IdentityKey = tuple[Channel, str]
RequirementKey = tuple[UUID, UUID | None, UUID | None, str]


class ItemTable(Mapping[UUID, Row[M]], Generic[M]):
    """Versions by id (a read-only mapping), with the per-profile-and-name and per-source
    indexes. Lists are in write order (ascending ``seq``)."""

    def __init__(self, codec: Codec[M]) -> None:
        self.codec = codec
        self._rows: dict[UUID, Row[M]] = {}
        self._by_profile: dict[UUID, dict[str, list[Row[M]]]] = {}
        self._by_source: dict[UUID, dict[UUID, Row[M]]] = {}

    # --- the mapping --------------------------------------------------------------------

    def __getitem__(self, item_id: UUID) -> Row[M]:
        return self._rows[item_id]

    def __iter__(self) -> Iterator[UUID]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    # --- indexed reads ------------------------------------------------------------------

    def names(self, profile_id: UUID) -> Mapping[str, list[Row[M]]]:
        """Name -> the profile's versions of it, oldest write first (do not change)."""
        return self._by_profile.get(profile_id, {})

    def versions(self, profile_id: UUID, name: str) -> list[Row[M]]:
        return self._by_profile.get(profile_id, {}).get(name, [])

    def of_profile(self, profile_id: UUID) -> Iterator[Row[M]]:
        for rows in self._by_profile.get(profile_id, {}).values():
            yield from rows

    def active(self, profile_id: UUID, name: str) -> Row[M] | None:
        """The ACTIVE version of a field name (at most one: the store's invariant), found
        from the newest write back: usually the newest itself."""
        for row in reversed(self.versions(profile_id, name)):
            if row.status is ItemStatus.ACTIVE:
                return row
        return None

    def derived_from(self, source_id: UUID) -> Iterable[Row[M]]:
        return self._by_source.get(source_id, {}).values()

    def owners(self) -> list[UUID]:
        """Every profile holding versions in this table."""
        return list(self._by_profile)

    def sources(self) -> list[UUID]:
        """Every id some item names as its source."""
        return list(self._by_source)

    # --- writes -------------------------------------------------------------------------

    def add(self, profile_id: UUID, seq: int, values: tuple[Any, ...]) -> Row[M]:
        row = Row(self.codec, profile_id, seq, values)
        self._link(row)
        return row

    def __setitem__(self, item_id: UUID, row: Row[M]) -> None:
        """Store a row built outside the table (code that plants a state, such as the
        contract suite's mutation tests), replacing any row of that id."""
        if row.values[0] != item_id:
            raise ValueError("the row's id is not the key")
        held = self._rows.get(item_id)
        if held is not None:
            self.remove(held)
        self._link(row)

    def _link(self, row: Row[M]) -> None:
        item_id: UUID = row.values[0]
        row.table = self
        self._rows[item_id] = row
        rows = self._by_profile.setdefault(row.profile_id, {}).setdefault(row.name, [])
        rows.append(row)
        if len(rows) > 1 and rows[-2].seq > row.seq:
            rows.sort(key=_seq)
        source = row.source_id
        if source is not None:
            self._by_source.setdefault(source, {})[item_id] = row

    def rewrite(self, row: Row[M], values: tuple[Any, ...]) -> None:
        """New content for a stored version (same id); the indexes follow a new name or
        source."""
        old_name, old_source = row.name, row.source_id
        item_id: UUID = row.values[0]
        if values[self.codec.name_at] != old_name:
            self._unlink_name(row)
            row.values = values
            self._link_name(row)
        else:
            row.values = values
        if row.source_id != old_source:
            if old_source is not None:
                self._unlink_source(old_source, item_id)
            if row.source_id is not None:
                self._by_source.setdefault(row.source_id, {})[item_id] = row

    def change(self, row: Row[M], **changes: Any) -> None:
        """Change status, supersede links or timestamps of a stored version."""
        self.rewrite(row, self.codec.replace(row.values, changes))

    def move(self, row: Row[M], profile_id: UUID) -> None:
        """Give a version to another profile (merge, unmerge)."""
        self._unlink_name(row)
        row._profile_id = profile_id
        self._link_name(row)

    def remove(self, row: Row[M]) -> None:
        item_id: UUID = row.values[0]
        del self._rows[item_id]
        row.table = None
        self._unlink_name(row)
        if row.source_id is not None:
            self._unlink_source(row.source_id, item_id)

    def remove_profile(self, profile_id: UUID) -> None:
        for rows in self._by_profile.pop(profile_id, {}).values():
            for row in rows:
                item_id: UUID = row.values[0]
                del self._rows[item_id]
                row.table = None
                if row.source_id is not None:
                    self._unlink_source(row.source_id, item_id)

    # --- index upkeep -------------------------------------------------------------------

    def _link_name(self, row: Row[M]) -> None:
        rows = self._by_profile.setdefault(row.profile_id, {}).setdefault(row.name, [])
        rows.append(row)
        if len(rows) > 1 and rows[-2].seq > row.seq:
            rows.sort(key=_seq)  # a moved version lands among newer ones

    def _unlink_name(self, row: Row[M]) -> None:
        names = self._by_profile[row.profile_id]
        rows = names[row.name]
        rows.remove(row)
        if not rows:
            del names[row.name]
            if not names:
                del self._by_profile[row.profile_id]

    def _unlink_source(self, source: UUID, item_id: UUID) -> None:
        derived = self._by_source[source]
        del derived[item_id]
        if not derived:
            del self._by_source[source]


def _seq(row: Row[Any]) -> int:
    return row.seq


@dataclass
class TenantProfile:
    """The profile's own attributes (no fields or assets) and whether it is soft-deleted."""

    profile: CustomerProfile
    deleted: bool = False


@dataclass
class Tenant:
    profiles: dict[UUID, TenantProfile] = field(default_factory=dict)
    fields: ItemTable[ProfileField] = field(default_factory=lambda: ItemTable(FIELD))
    assets: ItemTable[ProfileAsset] = field(default_factory=lambda: ItemTable(ASSET))
    # identities and customer ids owned by LIVE profiles only (an identity key holds the
    # channel user id, personal data: never in the repr)
    identities: dict[IdentityKey, UUID] = field(default_factory=dict, repr=False)
    customers: dict[UUID, UUID] = field(default_factory=dict)
    definitions: dict[tuple[UUID, str], ProfileFieldDefinition] = field(default_factory=dict)
    requirements: dict[RequirementKey, ScenarioFieldRequirement] = field(default_factory=dict)
    merges: dict[UUID, MergeRecord] = field(default_factory=dict)
    # profile id -> ids of the merges naming it as source or target (in log order)
    merges_of: dict[UUID, dict[UUID, None]] = field(default_factory=dict)

    def add_merge(self, record: MergeRecord) -> None:
        self.merges[record.id] = record
        for end in (record.source_profile_id, record.target_profile_id):
            self.merges_of.setdefault(end, {})[record.id] = None

    def remove_merge(self, merge_id: UUID) -> None:
        record = self.merges.pop(merge_id)
        for end in (record.source_profile_id, record.target_profile_id):
            held = self.merges_of.get(end)
            if held is not None:
                held.pop(merge_id, None)
                if not held:
                    del self.merges_of[end]

    def merges_naming(self, profile_id: UUID) -> list[MergeRecord]:
        return [self.merges[m] for m in self.merges_of.get(profile_id, {})]
