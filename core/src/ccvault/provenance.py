"""Provenance: why the vault believes a value, what it served at a past instant, and revert.

Pure functions over what the store's hooks return (field versions, lineage entries,
dependents); :class:`~ccvault.store.ProfileStore` reads the state and calls them, so every
provider and wrapper answers the same way with no hook of its own. Nothing here performs I/O.

**Transaction time.** "As of ``at``" means: what the vault's reads (``get_field``,
``CustomerProfile.fields``) would have returned at the instant ``at`` of the store's clock,
reconstructed from the stored history. A version is *served* over ``[start, end)``:

* ``start`` — the instant it was written, read from the stored timestamps in this order:
  the earliest ``superseded_at`` of the versions whose ``superseded_by_id`` is this version
  (its own write superseded them in the same atomic step; merge losers, whose
  ``superseded_at`` is the merge's, do not count); else the ``updated_at`` of a version
  still ACTIVE, also when read as EXPIRED before a sweep marked it (``update_field`` sets
  it to the store's clock at the write; nothing but an in-place ``save`` of the caller's
  copy changes it while the version stays ACTIVE; a version created by ``save`` keeps the
  caller's); else its ``collected_at``. The last case — a version no longer ACTIVE whose
  write replaced nothing — is the one the stored history does not record exactly
  (``updated_at`` was moved by the later supersede, sweep or orphan marking): the caller's
  ``collected_at`` stands in for the write instant, which is exact when ``collected_at`` is
  the moment of writing (the default). A per-version write timestamp stored by the
  providers would remove this case.
* ``end`` — the earliest of ``superseded_at``, ``expires_at`` (an expired value is never
  served, marked EXPIRED or not), and, for an ORPHANED version, the ``updated_at`` at which
  it was so marked. ``None``: still served.

Every instant is the store's clock (``ProfileStore.now``; a provider's own supersede
instant when it takes one): clocks of different machines that disagree shift the answer by
their skew. At ``at`` the value of a name is the served version that started last (ties: the more
recently collected, then the later write); a version past ``expires_at`` at ``at`` is not
served, and an older one does not come back in its place. Hard-deleted versions
(``delete_item``, ``purge_profile``) are gone from the history and from every as-of answer.

**Merges.** A merge moves every version of the source to the target with its id unchanged,
and supersedes the losing ACTIVE versions at the merge instant (that is their ``end``). Read
with the merge log (:func:`moves_from_log`), a version belongs at ``at`` to the profile the
log places it on: items moved by a merge belonged to the source at every instant before the
merge (an as-of read of the target leaves them out, one of the source includes them, wherever
they are now, following chained merges), and items an unmerge moved back belong to the target
only between the merge and the unmerge. A version written after a merge was never moved and
belongs to the profile it was written to. Merge losers are not counted as versions their
winner's write replaced (their ``superseded_at`` is the merge instant, not the winner's
write). A store without a merge log attributes every version to the profile holding it now.
A version a merge superseded and its unmerge made ACTIVE again was served up to the merge
and again from the unmerge (:func:`served_intervals`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import Field

from ccvault.models import (
    ItemStatus,
    LineageEntry,
    ProfileAsset,
    ProfileField,
    SourceType,
    UtcDatetime,
    VaultModel,
)

__all__ = [
    "FieldExplanation",
    "Move",
    "ProfileAsOf",
    "ReplacedVersion",
    "ReplacementReason",
    "explain",
    "explanation_lines",
    "field_as_of",
    "fields_as_of",
    "moves_from_log",
    "owner_at",
    "plan_revert",
    "reactivations_from_log",
    "served_interval",
    "served_intervals",
    "written_at",
]

_NONE: frozenset[UUID] = frozenset()
_NO_GAPS: Mapping[UUID, tuple[datetime, datetime]] = {}


class ReplacementReason(StrEnum):
    """Why a version is no longer the served value."""

    #: a newer write of the name superseded it (``update_field``, ``save``)
    UPDATE = "update"
    #: superseded by a revert to an earlier version (:func:`plan_revert`)
    REVERT = "revert"
    #: superseded by the other side's version when two profiles were merged
    MERGE = "merge"
    #: its ``expires_at`` passed (swept to EXPIRED or not)
    EXPIRY = "expiry"
    #: the item it was derived from was deleted (``mark_orphans``)
    ORPHANED = "orphaned"


class ReplacedVersion(VaultModel):
    """One earlier version of the name and why it stopped being served."""

    version: ProfileField
    reason: ReplacementReason
    #: the version that replaced it (superseded versions only)
    replaced_by_id: UUID | None = None
    #: when it stopped being served
    replaced_at: UtcDatetime | None = None
    #: the merge that superseded it, when the merge log says so
    merge_id: UUID | None = None


class FieldExplanation(VaultModel):
    """Everything the vault holds about why it serves the value of one field."""

    profile_id: UUID
    name: str
    explained_at: UtcDatetime
    #: the served version (None: nothing is served, every version is replaced or expired)
    active: ProfileField | None = None
    #: how the active value was extracted (``source_metadata`` "extraction_method", else
    #: "extractor"), and the words it was taken from ("quote"), when recorded
    extractor: str | None = None
    quote: str | None = None
    #: when the active version is a revert: the version whose value it restores
    restores_version_id: UUID | None = None
    #: every other version of the name, newest first, each with why it is not served
    replaced: list[ReplacedVersion] = Field(default_factory=list)
    #: what the active version derives from: root first, the active version last
    derivation_chain: list[LineageEntry] = Field(default_factory=list)
    #: fields and assets (any status) derived directly from the active version, oldest first
    dependent_fields: list[ProfileField] = Field(default_factory=list)
    dependent_assets: list[ProfileAsset] = Field(default_factory=list)


class ProfileAsOf(VaultModel):
    """What the vault would have served of a profile's fields at ``at``."""

    profile_id: UUID
    tenant_id: UUID
    customer_id: UUID
    at: UtcDatetime
    #: name -> the version served at ``at``, as it was served (ACTIVE, no supersede link)
    fields: dict[str, ProfileField] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# transaction time
# ---------------------------------------------------------------------------------------


def _unswept(version: ProfileField) -> bool:
    """An ACTIVE version read as EXPIRED (presented past ``expires_at``): a sweep marks a
    version at or after its ``expires_at``, so an ``updated_at`` before it is the write's."""
    return (
        version.status is ItemStatus.EXPIRED
        and version.expires_at is not None
        and version.updated_at < version.expires_at
    )


def written_at(
    version: ProfileField,
    versions: Iterable[ProfileField],
    merge_losers: Container[UUID] = _NONE,
) -> datetime:
    """The instant ``version`` was written, as the stored history tells it (module docstring).

    ``versions``: the versions of its name (it may be among them); ``merge_losers``: ids of
    versions a merge superseded (their ``superseded_at`` is the merge's, not a write's).
    """
    replaced = _replaced_at(version, versions, merge_losers)
    if replaced is not None:
        return replaced
    if version.status is ItemStatus.ACTIVE or _unswept(version):
        return version.updated_at
    return version.collected_at


def _replaced_at(
    version: ProfileField, versions: Iterable[ProfileField], merge_losers: Container[UUID]
) -> datetime | None:
    """When ``version``'s own write superseded its predecessor, if it superseded one."""
    replaced = [
        other.superseded_at
        for other in versions
        if other.superseded_by_id == version.id
        and other.id != version.id
        and other.superseded_at is not None
        and other.id not in merge_losers
    ]
    return min(replaced) if replaced else None


def _first_written(
    version: ProfileField, versions: Iterable[ProfileField], merge_losers: Container[UUID]
) -> datetime:
    replaced = _replaced_at(version, versions, merge_losers)
    return version.collected_at if replaced is None else replaced


def served_interval(
    version: ProfileField,
    versions: Iterable[ProfileField],
    merge_losers: Container[UUID] = _NONE,
) -> tuple[datetime, datetime | None]:
    """``(start, end)``: ``version`` was served at ``t`` when ``start <= t < end``."""
    start = written_at(version, versions, merge_losers)
    ends: list[datetime] = []
    if version.superseded_at is not None:
        ends.append(version.superseded_at)
    if version.expires_at is not None:
        ends.append(version.expires_at)
    if version.status is ItemStatus.ORPHANED or (
        version.status is ItemStatus.EXPIRED and version.expires_at is None
    ):
        ends.append(version.updated_at)  # when it was so marked
    return start, (min(ends) if ends else None)


def served_intervals(
    version: ProfileField,
    versions: Iterable[ProfileField],
    merge_losers: Container[UUID] = _NONE,
    reactivated: Mapping[UUID, tuple[datetime, datetime]] = _NO_GAPS,
) -> list[tuple[datetime, datetime | None]]:
    """Every ``(start, end)`` over which ``version`` was served, oldest first.

    One interval (:func:`served_interval`), except for a version a merge superseded and its
    unmerge made ACTIVE again (``reactivated``: version id -> (merged_at, unmerged_at), from
    :func:`reactivations_from_log`): served from its write to the merge, and again from the
    unmerge (``updated_at`` = the unmerge, when it did reactivate it) to its end.
    """
    versions = list(versions)
    start, end = served_interval(version, versions, merge_losers)
    gap = reactivated.get(version.id)
    if gap is None:
        return [(start, end)]
    merged_at, unmerged_at = gap
    if version.updated_at < unmerged_at or (
        version.superseded_at is not None and version.superseded_at < unmerged_at
    ):
        return [(start, end)]  # the unmerge left it superseded
    first = _first_written(version, versions, merge_losers)
    until = merged_at if version.expires_at is None else min(merged_at, version.expires_at)
    return [(first, until), (unmerged_at, end)]


def _as_served(version: ProfileField, start: datetime) -> ProfileField:
    return version.model_copy(
        update={
            "status": ItemStatus.ACTIVE,
            "superseded_by_id": None,
            "superseded_at": None,
            "updated_at": start,
        }
    )


def field_as_of(
    versions: Sequence[ProfileField],
    at: datetime,
    *,
    owned: Callable[[UUID], bool] | None = None,
    merge_losers: Container[UUID] = _NONE,
    reactivated: Mapping[UUID, tuple[datetime, datetime]] = _NO_GAPS,
) -> ProfileField | None:
    """The version of one name served at ``at``, as it was served then, or None.

    ``versions``: every stored version of the name, newest first (the order of
    ``get_field_history``: between equal starts and collection times the earlier in this
    order wins). ``owned(version_id)``: whether the version belonged to the profile at
    ``at`` (:func:`owner_at`); None: all of them did.
    """
    best: tuple[datetime, datetime, int] | None = None
    chosen: ProfileField | None = None
    for position, version in enumerate(versions):
        if owned is not None and not owned(version.id):
            continue
        pieces = served_intervals(version, versions, merge_losers, reactivated)
        start = next(
            (begin for begin, end in pieces if begin <= at and (end is None or at < end)), None
        )
        if start is None:
            continue
        key = (start, version.collected_at, -position)
        if best is None or key > best:
            best, chosen = key, version
    if chosen is None or best is None:
        return None
    return _as_served(chosen, best[0])


def fields_as_of(
    history: Mapping[str, Sequence[ProfileField]],
    at: datetime,
    *,
    owned: Callable[[UUID], bool] | None = None,
    merge_losers: Container[UUID] = _NONE,
    reactivated: Mapping[UUID, tuple[datetime, datetime]] = _NO_GAPS,
) -> dict[str, ProfileField]:
    """Name -> the version served at ``at``, for every name of ``history`` that had one."""
    served: dict[str, ProfileField] = {}
    for name in sorted(history):
        found = field_as_of(
            history[name], at, owned=owned, merge_losers=merge_losers, reactivated=reactivated
        )
        if found is not None:
            served[name] = found
    return served


# ---------------------------------------------------------------------------------------
# merges: where a version was at an instant
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Move:
    """Field versions a merge (or the unmerge undoing it) moved between two profiles."""

    at: datetime
    from_profile: UUID
    to_profile: UUID
    field_ids: frozenset[UUID]


def moves_from_log(records: Iterable[Any]) -> tuple[list[Move], dict[UUID, UUID]]:
    """The moves of merge log entries (``MergeRecord``), oldest first, and loser version
    id -> merge id of the versions the merges superseded.

    A merge moves ``moved_field_ids`` from its source to its target at ``merged_at``; an
    undone one (``unmerged_at``) moves them back at ``unmerged_at``.
    """
    moves: list[Move] = []
    losers: dict[UUID, UUID] = {}
    for record in records:
        ids = frozenset(record.moved_field_ids)
        source, target = record.source_profile_id, record.target_profile_id
        moves.append(Move(record.merged_at, source, target, ids))
        if record.unmerged_at is not None:
            moves.append(Move(record.unmerged_at, target, source, ids))
        for superseded in record.superseded:
            losers[superseded.loser_id] = record.id
    moves.sort(key=lambda move: move.at)
    return moves, losers


def reactivations_from_log(records: Iterable[Any]) -> dict[UUID, tuple[datetime, datetime]]:
    """Version id -> (merged_at, unmerged_at) of every version an undone merge superseded
    (the unmerge made it ACTIVE again unless something newer had replaced it)."""
    gaps: dict[UUID, tuple[datetime, datetime]] = {}
    for record in records:
        if record.unmerged_at is None:
            continue
        for superseded in record.superseded:
            gaps[superseded.loser_id] = (record.merged_at, record.unmerged_at)
    return gaps


def owner_at(item_id: UUID, holder: UUID, moves: Sequence[Move], at: datetime) -> UUID:
    """The profile version ``item_id``, held by ``holder`` now, belonged to at ``at``.

    ``moves`` oldest first: the destination of the last move of the item at or before ``at``;
    before its first move, that move's origin; never moved: ``holder``.
    """
    mine = [move for move in moves if item_id in move.field_ids]
    if not mine:
        return holder
    passed = [move for move in mine if move.at <= at]
    return passed[-1].to_profile if passed else mine[0].from_profile


# ---------------------------------------------------------------------------------------
# explanation
# ---------------------------------------------------------------------------------------


def _restores(version: ProfileField, ids: set[UUID]) -> UUID | None:
    if version.source_item_type is SourceType.PROFILE_FIELD and version.source_item_id in ids:
        return version.source_item_id
    return None


def explain(
    profile_id: UUID,
    name: str,
    versions: Sequence[ProfileField],
    now: datetime,
    *,
    chain: Sequence[LineageEntry] = (),
    dependent_fields: Sequence[ProfileField] = (),
    dependent_assets: Sequence[ProfileAsset] = (),
    merge_superseded: Mapping[UUID, UUID] | None = None,
) -> FieldExplanation:
    """The explanation of ``name`` from its versions (newest first, as presented at ``now``).

    ``merge_superseded``: loser version id -> merge id, from the merge log when there is one;
    a superseded version listed there was replaced by a merge, every other superseded version
    by a write (a revert when its successor restores an earlier version of the name).
    """
    merges = merge_superseded or {}
    ids = {version.id for version in versions}
    by_id = {version.id: version for version in versions}
    active = next(
        (v for v in versions if v.status is ItemStatus.ACTIVE and not v.is_expired(now)), None
    )
    replaced: list[ReplacedVersion] = []
    for version in versions:
        if active is not None and version.id == active.id:
            continue
        _, end = served_interval(version, versions, merges.keys())
        if version.status is ItemStatus.SUPERSEDED:
            merge_id = merges.get(version.id)
            successor = by_id.get(version.superseded_by_id) if version.superseded_by_id else None
            if merge_id is not None:
                reason = ReplacementReason.MERGE
            elif successor is not None and _restores(successor, ids) is not None:
                reason = ReplacementReason.REVERT
            else:
                reason = ReplacementReason.UPDATE
            replaced.append(
                ReplacedVersion(
                    version=version,
                    reason=reason,
                    replaced_by_id=version.superseded_by_id,
                    replaced_at=version.superseded_at,
                    merge_id=merge_id,
                )
            )
        elif version.status is ItemStatus.ORPHANED:
            replaced.append(
                ReplacedVersion(version=version, reason=ReplacementReason.ORPHANED, replaced_at=end)
            )
        else:  # EXPIRED, or ACTIVE past expires_at (presented EXPIRED already)
            replaced.append(
                ReplacedVersion(
                    version=version,
                    reason=ReplacementReason.EXPIRY,
                    replaced_at=version.expires_at or end,
                )
            )
    metadata = {} if active is None else active.source_metadata
    extractor = metadata.get("extraction_method", metadata.get("extractor"))
    quote = metadata.get("quote")
    return FieldExplanation(
        profile_id=profile_id,
        name=name,
        explained_at=now,
        active=active,
        extractor=extractor if isinstance(extractor, str) else None,
        quote=quote if isinstance(quote, str) else None,
        restores_version_id=None if active is None else _restores(active, ids),
        replaced=replaced,
        derivation_chain=list(chain) if active is not None else [],
        dependent_fields=list(dependent_fields),
        dependent_assets=list(dependent_assets),
    )


# ---------------------------------------------------------------------------------------
# revert
# ---------------------------------------------------------------------------------------


def plan_revert(restored: ProfileField, now: datetime) -> ProfileField:
    """The new version that makes ``restored``'s value the served one again at ``now``.

    A new id, ACTIVE, collected ``now``; the value and how it was obtained and verified
    (value, type, source, session/scenario/step, extractor metadata, verification,
    confidence, definition) are those of ``restored``; its lineage points at ``restored``
    (``source_item_type=profile_field``). A restored version that expired keeps its lifetime:
    the new one expires as long after ``now`` as ``restored`` did after its collection
    (a value collected with no lifetime left, or none, gets the same: ``expires_at`` None
    stays None).
    """
    expires_at: datetime | None = None
    if restored.expires_at is not None:
        lifetime = max(restored.expires_at - restored.collected_at, timedelta(0))
        expires_at = now + lifetime
    return ProfileField(
        name=restored.name,
        value=restored.value,
        value_type=restored.value_type,
        source=restored.source,
        source_session_id=restored.source_session_id,
        source_scenario_id=restored.source_scenario_id,
        source_step_id=restored.source_step_id,
        source_item_id=restored.id,
        source_item_type=SourceType.PROFILE_FIELD,
        source_metadata=dict(restored.source_metadata),
        verified=restored.verified,
        verification_method=restored.verification_method,
        verified_at=restored.verified_at,
        verified_by=restored.verified_by,
        confidence=restored.confidence,
        requires_confirmation=restored.requires_confirmation,
        collected_at=now,
        updated_at=now,
        expires_at=expires_at,
        field_definition_id=restored.field_definition_id,
    )


# ---------------------------------------------------------------------------------------
# presentation (the CLI prints these lines as plain text, never markup)
# ---------------------------------------------------------------------------------------


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds")


def explanation_lines(found: FieldExplanation) -> list[str]:
    """``found`` as lines of plain text, for a terminal (customer strings included as they
    are: the caller escapes control characters and never renders markup)."""
    lines = [f"field {found.name} of profile {found.profile_id}"]
    active = found.active
    if active is None:
        lines.append("served: nothing (every version is replaced or expired)")
    else:
        lines.append(f"served: {_value(active.value)}  (version {active.id})")
        lines.append(
            f"  source: {active.source.value}  confidence: {active.confidence:g}"
            f"  collected: {_when(active.collected_at)}  expires: {_when(active.expires_at)}"
        )
        if active.source_session_id is not None:
            lines.append(f"  session: {active.source_session_id}")
        if found.extractor is not None:
            lines.append(f"  extractor: {found.extractor}")
        if found.quote is not None:
            lines.append(f"  quote: {found.quote}")
        if active.source_metadata:
            lines.append(f"  metadata: {_value(active.source_metadata)}")
        verified = "no"
        if active.verified:
            how = ", ".join(
                part
                for part in (
                    active.verification_method,
                    active.verified_by,
                    _when(active.verified_at) if active.verified_at else None,
                )
                if part
            )
            verified = f"yes ({how})" if how else "yes"
        lines.append(f"  verified: {verified}")
        if found.restores_version_id is not None:
            lines.append(f"  restores version {found.restores_version_id} (revert)")
    lines.append(f"replaced versions: {len(found.replaced)}")
    for replaced in found.replaced:
        by = f" by {replaced.replaced_by_id}" if replaced.replaced_by_id else ""
        merge = f" (merge {replaced.merge_id})" if replaced.merge_id else ""
        lines.append(
            f"  {_value(replaced.version.value)}  {replaced.reason.value}{by}{merge}"
            f" at {_when(replaced.replaced_at)}  (version {replaced.version.id},"
            f" source {replaced.version.source.value})"
        )
    if active is not None:
        lines.append("derived from (root first):")
        for entry in found.derivation_chain:
            lines.append(f"  {entry.type.value} {entry.name} {entry.id}")
        lines.append(
            f"depends on it: {len(found.dependent_fields)} field(s),"
            f" {len(found.dependent_assets)} asset(s)"
        )
        for item in found.dependent_fields:
            lines.append(f"  field {item.name} {item.id} ({item.status.value})")
        for asset in found.dependent_assets:
            lines.append(f"  asset {asset.name} {asset.id} ({asset.status.value})")
    return lines
