"""The merge rule as a pure plan: which versions are superseded, where identities go.

A provider reads the state of both profiles inside its merge transaction (their identities
and their ACTIVE field versions), builds two :class:`MergeSide` values, calls
:func:`plan_merge` and applies the returned :class:`MergePlan` atomically, writing exactly
what the plan lists and nothing else:

* every :class:`Supersede` entry: the loser version becomes SUPERSEDED, with
  ``superseded_by_id`` = the winner and ``superseded_at`` = ``updated_at`` = ``plan.now``;
* every field version, asset and consent of the source moves to the target with its id
  unchanged (consents after the target's own, in their order);
* every :class:`IdentityPlacement` of ``plan.identities``: the identity belongs to the
  target with the given ``primary`` flag (source identities move; target identities whose
  ``changed`` is True get the new flag);
* the source is soft-deleted at ``plan.now`` and the target's ``updated_at`` is ``plan.now``.

The rules (DESIGN.md §4, "Channels and merge"):

* where the two sides hold ACTIVE versions of one name, :func:`merge_winner` picks one and
  every other ACTIVE version of that name becomes SUPERSEDED by it, so exactly one ACTIVE
  version per name remains;
* at most one identity is primary afterwards: the target's primary stays primary; if the
  target has none, the source's primary becomes the merged profile's primary; every other
  identity is secondary.

Survivorship policies (issue 16): a field definition may declare how a merge settles its
name (:class:`~ccvault.models.SurvivorshipPolicy`). :func:`policies_from_definitions` says
which definition applies when several agents of the tenant define one name: among the
*enabled* definitions of that name, the first by ``agent_id`` (UUID order) that declares a
policy other than the default ``verified_first``; none: ``verified_first``. It is decided
once, from the definitions read before the merge, and recorded per superseded version in
the merge log. :func:`survivorship_winner` applies one policy; :func:`should_replace` offers
the same decision to ``update_field`` callers ("never overwrite a verified value with an
unverified one": read the ACTIVE version, write only when it returns True).

The merge log (:class:`~ccvault.models.MergeRecord`): :func:`merge_record` builds the entry
a provider stores in the merge's own transaction, from the plan and what it moved.

Nothing here performs I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID, uuid4

from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    MergeIdentityMove,
    MergeRecord,
    MergeSupersede,
    ProfileField,
    ProfileFieldDefinition,
    ProfileFieldSource,
    SurvivorshipPolicy,
)

__all__ = [
    "FieldPolicy",
    "HeldIdentity",
    "IdentityPlacement",
    "MergeLogRequest",
    "MergePlan",
    "MergeSide",
    "MergeWinner",
    "Supersede",
    "merge_record",
    "merge_winner",
    "plan_merge",
    "policies_from_definitions",
    "should_replace",
    "survivorship_chooser",
    "survivorship_winner",
]

MergeWinner = Callable[[ProfileField, ProfileField], ProfileField]
"""Given the target's and the source's ACTIVE version of one name, return the one to keep."""


def merge_winner(
    target: ProfileField, source: ProfileField, *, now: datetime | None = None
) -> ProfileField:
    """The merge conflict rule: the verified version wins, else the most recently collected.

    Given ``now``, a version past its ``expires_at`` first loses to one that is not: an
    expired value is never served, so it must not push out a valid one. On a full tie the
    target's version is kept.
    """
    if now is not None and target.is_expired(now) != source.is_expired(now):
        return source if target.is_expired(now) else target
    if target.verified != source.verified:
        return target if target.verified else source
    return source if source.collected_at > target.collected_at else target


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    """The survivorship policy of one field name (from its definition)."""

    policy: SurvivorshipPolicy = SurvivorshipPolicy.VERIFIED_FIRST
    source_priority: tuple[ProfileFieldSource, ...] = ()


DEFAULT_POLICY = FieldPolicy()


def survivorship_winner(
    target: ProfileField,
    source: ProfileField,
    policy: FieldPolicy = DEFAULT_POLICY,
    *,
    now: datetime | None = None,
) -> ProfileField:
    """The version ``policy`` keeps of ``target`` and ``source`` (see SurvivorshipPolicy).

    Every policy first prefers an unexpired version at ``now``; a full tie keeps the target's.
    """
    if now is not None and target.is_expired(now) != source.is_expired(now):
        return source if target.is_expired(now) else target
    kind = policy.policy
    if kind is SurvivorshipPolicy.KEEP_TARGET:
        return target
    if kind is SurvivorshipPolicy.MOST_RECENT:
        return source if source.collected_at > target.collected_at else target
    if kind is SurvivorshipPolicy.MOST_CONFIDENT and target.confidence != source.confidence:
        return target if target.confidence > source.confidence else source
    if kind is SurvivorshipPolicy.SOURCE_PRIORITY:
        order = policy.source_priority
        rank_t = order.index(target.source) if target.source in order else len(order)
        rank_s = order.index(source.source) if source.source in order else len(order)
        if rank_t != rank_s:
            return target if rank_t < rank_s else source
    return merge_winner(target, source, now=now)


def survivorship_chooser(
    policies: Mapping[str, FieldPolicy], now: datetime | None = None
) -> MergeWinner:
    """A ``choose_winner`` for :func:`plan_merge` applying each name's policy."""

    def choose(target: ProfileField, source: ProfileField) -> ProfileField:
        policy = policies.get(target.name, DEFAULT_POLICY)
        return survivorship_winner(target, source, policy, now=now)

    return choose


def policies_from_definitions(
    definitions: Iterable[ProfileFieldDefinition],
) -> dict[str, FieldPolicy]:
    """Each name's policy: among the enabled definitions of the name, the first by
    ``agent_id`` declaring a policy other than ``verified_first``; names without one are
    left out (they use the default)."""
    chosen: dict[str, FieldPolicy] = {}
    for definition in sorted(definitions, key=lambda d: (d.agent_id.int, d.name)):
        if not definition.enabled or definition.name in chosen:
            continue
        if definition.survivorship is SurvivorshipPolicy.VERIFIED_FIRST:
            continue
        chosen[definition.name] = FieldPolicy(
            definition.survivorship, tuple(definition.source_priority)
        )
    return chosen


def should_replace(
    current: ProfileField | None,
    candidate: ProfileField,
    policy: FieldPolicy = DEFAULT_POLICY,
    *,
    now: datetime | None = None,
) -> bool:
    """True when ``candidate`` should supersede the ACTIVE ``current`` under ``policy``.

    For ``update_field`` callers: with the default policy an unverified candidate never
    replaces a verified value. The candidate is the newer write, so it plays the merge's
    source; a full tie replaces (the newer write wins) except under ``keep_target``.
    """
    if current is None or current.status is not ItemStatus.ACTIVE:
        return True
    if now is not None and current.is_expired(now):
        return True
    winner = survivorship_winner(current, candidate, policy, now=now)
    if winner is candidate:
        return True
    if policy.policy is SurvivorshipPolicy.KEEP_TARGET:
        return False
    # a tie on every criterion of the policy: the newer write wins
    return survivorship_winner(candidate, current, policy, now=now) is candidate


@dataclass(frozen=True, slots=True)
class HeldIdentity:
    """One channel identity a profile holds, as the merge rule needs it."""

    channel: Channel
    channel_user_id: str = field(repr=False)  # personal data: never in the repr
    primary: bool

    @classmethod
    def of(cls, identity: ChannelIdentity) -> HeldIdentity:
        return cls(identity.channel, identity.channel_user_id, identity.primary)

    @property
    def key(self) -> tuple[Channel, str]:
        return (self.channel, self.channel_user_id)


@dataclass(frozen=True, slots=True)
class MergeSide:
    """What a provider read of one profile inside its merge transaction.

    ``identities`` in the profile's list order; ``active_fields`` its ACTIVE field versions
    (expired or not; any other status is ignored).
    """

    profile_id: UUID
    identities: tuple[HeldIdentity, ...] = ()
    active_fields: tuple[ProfileField, ...] = ()

    @classmethod
    def of(
        cls,
        profile_id: UUID,
        identities: Iterable[HeldIdentity | ChannelIdentity] = (),
        active_fields: Iterable[ProfileField] = (),
    ) -> MergeSide:
        held = tuple(i if isinstance(i, HeldIdentity) else HeldIdentity.of(i) for i in identities)
        return cls(profile_id, held, tuple(active_fields))

    @classmethod
    def from_profile(cls, profile: CustomerProfile) -> MergeSide:
        """The side of a profile as a provider's own reader returns it (live, no history):
        its identities in order and its ACTIVE fields."""
        return cls.of(profile.id, profile.channel_identities, profile.fields.values())


@dataclass(frozen=True, slots=True)
class Supersede:
    """The ACTIVE version ``loser_id`` becomes SUPERSEDED by ``winner_id``."""

    name: str
    loser_id: UUID
    winner_id: UUID
    #: the profile the loser belonged to before the merge (target or source)
    loser_profile_id: UUID


@dataclass(frozen=True, slots=True)
class IdentityPlacement:
    """Where one identity ends up: on the target, with this ``primary`` flag."""

    channel: Channel
    channel_user_id: str = field(repr=False)  # personal data: never in the repr
    primary: bool
    #: True when the identity comes from the source (it moves to the target)
    from_source: bool
    #: True when ``primary`` differs from the flag stored before the merge
    changed: bool

    @property
    def key(self) -> tuple[Channel, str]:
        return (self.channel, self.channel_user_id)


@dataclass(frozen=True, slots=True)
class MergePlan:
    """Every write of one merge. See the module docstring for how to apply it."""

    source_id: UUID
    target_id: UUID
    #: superseded_at / updated_at of the losers, the source's deletion, the target's update
    now: datetime
    supersede: tuple[Supersede, ...]
    #: the merged profile's identities: the target's (in order), then the source's
    identities: tuple[IdentityPlacement, ...]

    @property
    def moved_identities(self) -> tuple[IdentityPlacement, ...]:
        """The source's identities, with the flag each carries on the target."""
        return tuple(i for i in self.identities if i.from_source)

    @property
    def target_flag_changes(self) -> tuple[IdentityPlacement, ...]:
        """The target's own identities whose ``primary`` flag changes."""
        return tuple(i for i in self.identities if not i.from_source and i.changed)

    @property
    def primary(self) -> tuple[Channel, str] | None:
        """The merged profile's primary identity, if any."""
        return next((i.key for i in self.identities if i.primary), None)


def _place_identities(target: MergeSide, source: MergeSide) -> tuple[IdentityPlacement, ...]:
    target_primary = next((i.key for i in target.identities if i.primary), None)
    primary = target_primary
    if primary is None:
        primary = next((i.key for i in source.identities if i.primary), None)
    placements: list[IdentityPlacement] = []
    seen: set[tuple[Channel, str]] = set()
    for side, from_source in ((target, False), (source, True)):
        for identity in side.identities:
            if identity.key in seen:  # never held twice; tolerate a duplicate read
                continue
            seen.add(identity.key)
            flag = identity.key == primary
            if flag:
                primary = None  # only the first one with that key is primary
            placements.append(
                IdentityPlacement(
                    channel=identity.channel,
                    channel_user_id=identity.channel_user_id,
                    primary=flag,
                    from_source=from_source,
                    changed=flag != identity.primary,
                )
            )
    return tuple(placements)


def _settle(
    target: MergeSide, source: MergeSide, choose_winner: MergeWinner
) -> tuple[Supersede, ...]:
    """One winner per name among every ACTIVE version of both sides; the rest lose to it."""
    by_name: dict[str, list[tuple[ProfileField, UUID]]] = {}
    for side in (target, source):
        for item in side.active_fields:
            if item.status is ItemStatus.ACTIVE:
                by_name.setdefault(item.name, []).append((item, side.profile_id))
    plan: list[Supersede] = []
    for name in sorted(by_name):
        versions = by_name[name]
        if len(versions) < 2:
            continue
        # the target's versions come first: on a full tie the target's is kept
        winner = versions[0][0]
        for item, _ in versions[1:]:
            winner = choose_winner(winner, item)
        for item, owner in versions:
            if item.id != winner.id:
                plan.append(Supersede(name, item.id, winner.id, owner))
    return tuple(plan)


def plan_merge(
    target: MergeSide,
    source: MergeSide,
    now: datetime,
    *,
    choose_winner: MergeWinner | None = None,
) -> MergePlan:
    """The writes that merge ``source`` into ``target`` at ``now``.

    ``choose_winner(target_version, source_version)`` decides a conflict; by default
    :func:`merge_winner` with ``now``. Pure: the same state gives the same plan.
    """
    if choose_winner is None:
        choose_winner = functools.partial(merge_winner, now=now)
    return MergePlan(
        source_id=source.profile_id,
        target_id=target.profile_id,
        now=now,
        supersede=_settle(target, source, choose_winner),
        identities=_place_identities(target, source),
    )


@dataclass(frozen=True, slots=True)
class MergeLogRequest:
    """What the public layer tells the provider about a merge, for its log entry."""

    merge_id: UUID = field(default_factory=uuid4)
    reason: str | None = None
    actor: str | None = None
    #: the names with a policy other than the default, as decided before the merge
    policies: Mapping[str, FieldPolicy] = field(default_factory=dict)


def merge_record(
    tenant_id: UUID,
    plan: MergePlan,
    request: MergeLogRequest,
    *,
    moved_field_ids: Iterable[UUID],
    moved_asset_ids: Iterable[UUID],
    moved_consents: Sequence[Consent],
    source_identities: Iterable[HeldIdentity | ChannelIdentity],
    target_identities: Iterable[HeldIdentity | ChannelIdentity],
) -> MergeRecord:
    """The merge log entry of ``plan``: a provider stores it in the merge's transaction.

    ``moved_*``: every field version and asset of the source (any status) and its consents
    in order, as read in the transaction; ``*_identities``: both sides as read (for the
    flags before the merge).
    """
    before = {
        (i.channel, i.channel_user_id): i.primary for i in (*target_identities, *source_identities)
    }
    moves = [
        MergeIdentityMove(
            channel=p.channel,
            channel_user_id=p.channel_user_id,
            from_source=p.from_source,
            primary_before=before.get(p.key, False),
            primary_after=p.primary,
        )
        for p in plan.identities
        if p.from_source or p.changed
    ]
    return MergeRecord(
        id=request.merge_id,
        tenant_id=tenant_id,
        source_profile_id=plan.source_id,
        target_profile_id=plan.target_id,
        merged_at=plan.now,
        reason=request.reason,
        actor=request.actor,
        moved_field_ids=list(dict.fromkeys(moved_field_ids)),
        moved_asset_ids=list(dict.fromkeys(moved_asset_ids)),
        moved_consents=[c.model_copy(deep=True) for c in moved_consents],
        identities=moves,
        superseded=[
            MergeSupersede(
                name=e.name,
                loser_id=e.loser_id,
                winner_id=e.winner_id,
                loser_profile_id=e.loser_profile_id,
                policy=request.policies.get(e.name, DEFAULT_POLICY).policy,
            )
            for e in plan.supersede
        ],
    )
