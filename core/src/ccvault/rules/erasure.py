"""Erasure by data subject: which profiles hold one person's data, and what erasing means.

The right to erasure is asked for by a *person*, named by a channel identity (a phone number,
an email address...), a customer id or a profile id. Over its life one person's data spreads
over several profiles: an earlier profile soft-deleted (its identities released, its fields
kept for export and audit), a profile merged away into another (its fields, assets, consents
and identities moved to the target), a new profile created for the same identity after the
old one was deleted. :func:`next_lookups` and :func:`plan_erasure` are the rule, once, for
every provider; the public layer (``ProfileStore.find_subject``, ``erase_subject``,
``export_subject``) drives the reads and a provider only answers them and erases the plan.

**The subject** of a key is the closure of these steps, starting from the key:

1. *Identity*: every profile, live or soft-deleted, that holds the channel identity now or
   held it when it was soft-deleted (a *released* identity row). The identities of every
   profile reached (released ones included) are looked up too: the person who held a phone
   number on an earlier profile is the person holding it on the current one. An identity
   removed from a profile by ``save``, ``link_channel(max_per_channel=...)`` eviction or an
   unlink is deleted from storage: nothing of it remains to find or to erase.
2. *Customer id*: every profile, live or soft-deleted, with that customer id. A customer id
   names one customer, so the customer ids of every profile reached are looked up too.
3. *Profile id*: the profile itself, live or soft-deleted.
4. *Merges*: a merge (an entry of the merge log not undone by ``unmerge``) states that its
   source and its target are the same person. Both sides of every such entry touching a
   profile reached are reached, in both directions and over chained merges.

The subject is thus the connected component of its key over shared identities, customer
ids and merges: the same set whichever of its keys names it. An entry undone by
``unmerge`` states the opposite (two different people): the closure does
not cross it, but the entry itself is erased, since it names the subject's profile and lists
what moved (identities, consents).

**Erasing a merged-away profile** therefore erases its merge target too, whole: what the
merge moved to the target (field versions, assets, consents, identities) is the subject's
data, and so is everything the target collected since under the subject's identities. A
target that turned out to be someone else is separated with ``unmerge`` first; the dry run
(``erase_subject(..., dry_run=True)``) lists the profiles a purge would erase.

**What erasing a profile removes**, in one atomic step per provider: the profile, every
field version (all statuses: history, verification data and extractor metadata included),
every asset (all statuses), every identity (live and released), every consent, and every
merge log entry whose source or target is one of the erased profiles; the cache drops every
entry of every erased profile and every lookup key that pointed at one. Lineage links of
*other* profiles' items that pointed at an erased item keep only the erased id (no personal
data); ``mark_orphans`` marks them ORPHANED.

Bounded: a subject resolving to more than :data:`MAX_SUBJECT_PROFILES` profiles is refused
with :class:`~ccvault.errors.ValidationError` before anything is written (erase such data
profile by profile). Nothing here performs I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from ccvault import errors
from ccvault.models import Channel, CustomerProfile, MergeRecord

__all__ = [
    "MAX_SUBJECT_PROFILES",
    "ErasedProfile",
    "ErasurePlan",
    "ErasureReport",
    "Lookups",
    "PlannedProfile",
    "ProfileKind",
    "SubjectKey",
    "SubjectProfile",
    "SubjectState",
    "erasure_report",
    "next_lookups",
    "plan_erasure",
    "subject_profile",
]

#: the most profiles one subject may resolve to (erase larger sets profile by profile)
MAX_SUBJECT_PROFILES = 256


@dataclass(frozen=True, slots=True)
class SubjectKey:
    """What names the data subject: exactly one of an identity, a customer id, a profile id.

    The channel user id is personal data: it is never part of the ``repr``.
    """

    channel: Channel | None = None
    channel_user_id: str | None = field(default=None, repr=False)
    customer_id: UUID | None = None
    profile_id: UUID | None = None

    def __post_init__(self) -> None:
        given = (
            (self.channel is not None)
            + (self.customer_id is not None)
            + (self.profile_id is not None)
        )
        if given != 1 or (self.channel is None) != (self.channel_user_id is None):
            raise errors.ValidationError(
                "name the subject by exactly one of: channel and channel_user_id, "
                "customer_id, profile_id"
            )


class ProfileKind(StrEnum):
    """What a profile of the subject is at the time of the plan."""

    LIVE = "live"
    DELETED = "deleted"  # soft-deleted
    MERGED_AWAY = "merged_away"  # soft-deleted as the source of a merge not undone


@dataclass(frozen=True, slots=True)
class SubjectProfile:
    """One profile of the subject as read (counts only: no personal data)."""

    profile_id: UUID
    customer_id: UUID
    live: bool
    #: every identity the profile holds or held when soft-deleted (personal data: no repr)
    identity_keys: frozenset[tuple[Channel, str]] = field(repr=False)
    field_versions: int
    assets: int
    identities: int
    consents: int


def subject_profile(exported: CustomerProfile, *, live: bool) -> SubjectProfile:
    """The counts of one profile read with its full history (``_export_profile``)."""
    return SubjectProfile(
        profile_id=exported.id,
        customer_id=exported.customer_id,
        live=live,
        identity_keys=frozenset(
            (i.channel, i.channel_user_id) for i in exported.channel_identities
        ),
        field_versions=sum(len(versions) for versions in exported.field_history.values()),
        assets=len(exported.asset_history),
        identities=len(exported.channel_identities),
        consents=len(exported.consents),
    )


@dataclass(slots=True)
class SubjectState:
    """What the reads found so far (filled by the public layer, read by the rule)."""

    profiles: dict[UUID, SubjectProfile] = field(default_factory=dict)
    #: profile ids whose merge log was read
    merge_logs_read: set[UUID] = field(default_factory=set)
    #: profile ids looked up (found or not)
    profiles_read: set[UUID] = field(default_factory=set)
    customer_ids_read: set[UUID] = field(default_factory=set)
    identities_read: set[tuple[Channel, str]] = field(default_factory=set, repr=False)
    merges: dict[UUID, MergeRecord] = field(default_factory=dict)

    def add_merges(self, records: Iterable[MergeRecord]) -> None:
        for record in records:
            self.merges[record.id] = record


@dataclass(frozen=True, slots=True)
class Lookups:
    """The reads the closure still needs; all empty: the subject is complete."""

    profile_ids: frozenset[UUID] = frozenset()
    merge_logs_of: frozenset[UUID] = frozenset()
    customer_ids: frozenset[UUID] = frozenset()
    identities: frozenset[tuple[Channel, str]] = field(default=frozenset(), repr=False)

    def __bool__(self) -> bool:
        return bool(self.profile_ids or self.merge_logs_of or self.customer_ids or self.identities)


def next_lookups(state: SubjectState) -> Lookups:
    """The next reads of the closure (module docstring): the merge log of every profile
    reached, the other side of every merge not undone, the customer id and the identities
    of every profile.

    Raises :class:`~ccvault.errors.ValidationError` once more than
    :data:`MAX_SUBJECT_PROFILES` profiles are reached.
    """
    if len(state.profiles) > MAX_SUBJECT_PROFILES:
        raise errors.ValidationError(
            f"the subject resolves to more than {MAX_SUBJECT_PROFILES} profiles; "
            "erase them profile by profile"
        )
    reached = state.profiles.keys()
    partners: set[UUID] = set()
    for record in state.merges.values():
        if record.unmerged_at is not None:
            continue  # an undone merge separates two people: not followed
        ends = {record.source_profile_id, record.target_profile_id}
        if ends & reached:
            partners |= ends
    return Lookups(
        profile_ids=frozenset(partners - state.profiles_read),
        merge_logs_of=frozenset(reached - state.merge_logs_read),
        customer_ids=frozenset(
            {p.customer_id for p in state.profiles.values()} - state.customer_ids_read
        ),
        identities=frozenset(
            {key for p in state.profiles.values() for key in p.identity_keys}
            - state.identities_read
        ),
    )


@dataclass(frozen=True, slots=True)
class PlannedProfile:
    """One profile the erasure removes, with what it holds (no personal data)."""

    profile_id: UUID
    kind: ProfileKind
    field_versions: int
    assets: int
    identities: int
    consents: int


@dataclass(frozen=True, slots=True)
class ErasurePlan:
    """What erasing the subject removes: the profiles (sorted by id) and the merge log
    entries (sorted by id) touching any of them. Empty: the key names nobody."""

    profiles: tuple[PlannedProfile, ...]
    merge_ids: tuple[UUID, ...]

    @property
    def profile_ids(self) -> tuple[UUID, ...]:
        return tuple(p.profile_id for p in self.profiles)


def plan_erasure(
    profiles: Mapping[UUID, SubjectProfile], merges: Iterable[MergeRecord]
) -> ErasurePlan:
    """The plan for a complete closure (:func:`next_lookups` returned no reads).

    A soft-deleted profile that is the source of a merge not undone is ``merged_away``.
    """
    records = list(merges)
    merged_away = {r.source_profile_id for r in records if r.unmerged_at is None}
    planned = []
    for profile_id in sorted(profiles, key=lambda u: u.int):
        found = profiles[profile_id]
        if found.live:
            kind = ProfileKind.LIVE
        elif profile_id in merged_away:
            kind = ProfileKind.MERGED_AWAY
        else:
            kind = ProfileKind.DELETED
        planned.append(
            PlannedProfile(
                profile_id=profile_id,
                kind=kind,
                field_versions=found.field_versions,
                assets=found.assets,
                identities=found.identities,
                consents=found.consents,
            )
        )
    touching = sorted(
        {
            r.id
            for r in records
            if r.source_profile_id in profiles or r.target_profile_id in profiles
        },
        key=lambda u: u.int,
    )
    return ErasurePlan(profiles=tuple(planned), merge_ids=tuple(touching))


class ErasedProfile(BaseModel):
    """One profile in an :class:`ErasureReport`: its id, what it was, what it held."""

    model_config = ConfigDict(frozen=True)

    profile_id: UUID
    kind: ProfileKind
    field_versions: int
    assets: int
    identities: int
    consents: int


class ErasureReport(BaseModel):
    """What ``erase_subject`` erased (or, with ``dry_run``, would erase): ids and counts only,
    never personal data (safe to log and to print). The same with and without ``dry_run``,
    except for the flag."""

    model_config = ConfigDict(frozen=True)

    tenant_id: UUID
    dry_run: bool
    profiles: list[ErasedProfile]
    merge_log_entries: int

    @property
    def profile_ids(self) -> list[UUID]:
        return [p.profile_id for p in self.profiles]

    def totals(self) -> dict[str, int]:
        """Counts per kind over every profile, plus the merge log entries."""
        return {
            "profiles": len(self.profiles),
            "field_versions": sum(p.field_versions for p in self.profiles),
            "assets": sum(p.assets for p in self.profiles),
            "identities": sum(p.identities for p in self.profiles),
            "consents": sum(p.consents for p in self.profiles),
            "merge_log_entries": self.merge_log_entries,
        }


def erasure_report(tenant_id: UUID, plan: ErasurePlan, *, dry_run: bool) -> ErasureReport:
    """The report of ``plan``."""
    return ErasureReport(
        tenant_id=tenant_id,
        dry_run=dry_run,
        profiles=[
            ErasedProfile(
                profile_id=p.profile_id,
                kind=p.kind,
                field_versions=p.field_versions,
                assets=p.assets,
                identities=p.identities,
                consents=p.consents,
            )
            for p in plan.profiles
        ],
        merge_log_entries=len(plan.merge_ids),
    )
