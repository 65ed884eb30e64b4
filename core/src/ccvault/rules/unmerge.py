"""The unmerge rule as a pure plan: undo one merge from its log entry and the current state.

A provider reads, inside one atomic step, the merge log entry (NotFoundError when unknown),
every other *open* (not undone) entry touching its target or source, and the current state of
both profiles (their liveness, every field version and asset with its status, their
identities and consents), builds an :class:`UnmergeState`, calls :func:`plan_unmerge` and
applies the returned :class:`UnmergePlan` exactly:

* every id of ``field_ids_to_source`` / ``asset_ids_to_source``: the item belongs to the
  source again (id unchanged, nothing else about it changes);
* every id of ``reactivate_field_ids``: status ACTIVE, ``superseded_by_id`` and
  ``superseded_at`` cleared, ``updated_at`` = ``plan.now``;
* ``identities``: each identity belongs to ``profile_id`` with the ``primary`` flag given
  (identities not listed do not change);
* the consents of target and source become ``target_consents`` / ``source_consents``;
* the source is live again (no longer soft-deleted), both profiles' ``updated_at`` =
  ``plan.now``, and the log entry is stored as ``plan.record`` (``unmerged_at`` set).

The documented rule (``ProfileStore.unmerge``):

* **What goes back.** Everything the merge moved (its recorded field versions, assets,
  identities and consents) goes back to the source, ids unchanged. Everything else stays on
  the target: the target's own items and every item written to the target after the merge,
  even one that superseded a moved item or derives from one.
* **Superseded versions.** A version the merge's survivorship rule superseded becomes ACTIVE
  again when it is still SUPERSEDED by the merge's winner and its profile (after the
  unmerge) holds no ACTIVE version of that name: nothing newer replaced it. Otherwise it
  stays as it is.
* **Conflicts are reported, not guessed.** A moved item that something written after the
  merge superseded goes back SUPERSEDED (``superseded_after_merge``); a moved item, identity
  or consent that is no longer on the target is reported (``item_gone``, ``identity_gone``,
  ``consent_gone``); a superseded version whose successor changed is left as it is
  (``loser_changed``).
* **Primary flags.** Moved identities get back their flag from before the merge. A target
  identity whose flag the merge changed gets its old flag back when its flag is still the one
  the merge set and no other target identity is primary by then.
* **Chained merges are refused, naming the merge to undo first**
  (:class:`~ccvault.errors.ConflictError`): when the target was itself merged away by an open
  merge, or when another open merge into the same target superseded an item this merge moved
  or decided. An entry already undone, a target no longer live, a source live again: refused.

Nothing here performs I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    MergeRecord,
    ProfileAsset,
    ProfileField,
    UnmergeConflict,
    UnmergeResult,
)

__all__ = ["IdentityUpdate", "UnmergePlan", "UnmergeState", "blocking_merge", "plan_unmerge"]


@dataclass(frozen=True, slots=True)
class UnmergeState:
    """What a provider read inside its unmerge transaction.

    ``open_merges``: every entry other than ``record`` not yet undone whose source or target
    is the record's target or source. ``*_fields`` / ``*_assets``: every version (any status)
    currently on each profile. ``target_live``: the target exists and is not soft-deleted;
    ``source_live``: the same of the source.
    """

    record: MergeRecord
    open_merges: tuple[MergeRecord, ...]
    target_live: bool
    source_live: bool
    target_fields: tuple[ProfileField, ...] = ()
    source_fields: tuple[ProfileField, ...] = ()
    target_assets: tuple[ProfileAsset, ...] = ()
    source_assets: tuple[ProfileAsset, ...] = ()
    target_identities: tuple[ChannelIdentity, ...] = ()
    source_identities: tuple[ChannelIdentity, ...] = ()
    target_consents: tuple[Consent, ...] = ()
    source_consents: tuple[Consent, ...] = ()

    @classmethod
    def from_profiles(
        cls,
        record: MergeRecord,
        open_merges: tuple[MergeRecord, ...],
        *,
        target_live: bool,
        source_live: bool,
        target: CustomerProfile | None,
        source: CustomerProfile | None,
    ) -> UnmergeState:
        """The state from both profiles as the provider read them WITH history (None: gone):
        every field version and asset of any status, the identities and the consents."""

        def versions(profile: CustomerProfile | None) -> tuple[ProfileField, ...]:
            if profile is None:
                return ()
            return tuple(v for vs in profile.field_history.values() for v in vs)

        return cls(
            record=record,
            open_merges=open_merges,
            target_live=target_live,
            source_live=source_live,
            target_fields=versions(target),
            source_fields=versions(source),
            target_assets=tuple(target.asset_history) if target else (),
            source_assets=tuple(source.asset_history) if source else (),
            target_identities=tuple(target.channel_identities) if target else (),
            source_identities=tuple(source.channel_identities) if source else (),
            target_consents=tuple(target.consents) if target else (),
            source_consents=tuple(source.consents) if source else (),
        )


@dataclass(frozen=True, slots=True)
class IdentityUpdate:
    """The identity belongs to ``profile_id`` with this ``primary`` flag."""

    channel: Channel
    channel_user_id: str = field(repr=False)  # personal data: never in the repr
    profile_id: UUID
    primary: bool
    #: True when it moves from the target to the source
    to_source: bool

    @property
    def key(self) -> tuple[Channel, str]:
        return (self.channel, self.channel_user_id)


@dataclass(frozen=True, slots=True)
class UnmergePlan:
    """Every write of one unmerge. See the module docstring for how to apply it."""

    record: MergeRecord
    now: datetime
    field_ids_to_source: tuple[UUID, ...]
    asset_ids_to_source: tuple[UUID, ...]
    reactivate_field_ids: tuple[UUID, ...]
    #: moved-back identities first (in the merge's order), then target flag restorations
    identities: tuple[IdentityUpdate, ...]
    target_consents: tuple[Consent, ...]
    source_consents: tuple[Consent, ...]
    result: UnmergeResult

    @property
    def source_id(self) -> UUID:
        return self.record.source_profile_id

    @property
    def target_id(self) -> UUID:
        return self.record.target_profile_id


def _touched(record: MergeRecord) -> set[UUID]:
    ids = set(record.moved_field_ids) | set(record.moved_asset_ids)
    for entry in record.superseded:
        ids.update((entry.loser_id, entry.winner_id))
    return ids


def blocking_merge(record: MergeRecord, open_merges: tuple[MergeRecord, ...]) -> MergeRecord | None:
    """The open merge that must be undone before ``record``, if any (see the module doc)."""
    for other in sorted(open_merges, key=lambda m: (m.merged_at, m.id.int)):
        if other.id == record.id or other.unmerged_at is not None:
            continue
        if other.source_profile_id == record.target_profile_id:
            return other
    touched = _touched(record)
    for other in sorted(open_merges, key=lambda m: (m.merged_at, m.id.int)):
        if other.id == record.id or other.unmerged_at is not None:
            continue
        if other.target_profile_id != record.target_profile_id:
            continue
        if any(e.loser_id in touched or e.winner_id in touched for e in other.superseded):
            return other
    return None


def plan_unmerge(state: UnmergeState, now: datetime) -> UnmergePlan:
    """The writes that undo ``state.record`` at ``now``; ConflictError when refused."""
    record = state.record
    if record.unmerged_at is not None:
        raise errors.ConflictError(f"merge {record.id} was already undone")
    blocker = blocking_merge(record, state.open_merges)
    if blocker is not None:
        raise errors.ConflictError(
            f"merge {record.id} cannot be undone before merge {blocker.id}: undo merge "
            f"{blocker.id} first"
        )
    if not state.target_live:
        raise errors.ConflictError(
            f"merge {record.id} cannot be undone: its target profile is no longer live"
        )
    if state.source_live:
        raise errors.ConflictError(
            f"merge {record.id} cannot be undone: its source profile is live again"
        )
    source_id, target_id = record.source_profile_id, record.target_profile_id
    conflicts: list[UnmergeConflict] = []

    on_target_fields = {f.id: f for f in state.target_fields}
    on_target_assets = {a.id: a for a in state.target_assets}
    moved_fields = [i for i in record.moved_field_ids if i in on_target_fields]
    moved_assets = [i for i in record.moved_asset_ids if i in on_target_assets]
    moved_field_set, moved_asset_set = set(moved_fields), set(moved_assets)
    for item_id in record.moved_field_ids:
        if item_id not in moved_field_set:
            conflicts.append(UnmergeConflict(kind="item_gone", item_type="field", item_id=item_id))
    for item_id in record.moved_asset_ids:
        if item_id not in moved_asset_set:
            conflicts.append(UnmergeConflict(kind="item_gone", item_type="asset", item_id=item_id))

    merge_pairs = {(e.loser_id, e.winner_id) for e in record.superseded}
    # moved items superseded by something that stays on the target: reported, left SUPERSEDED
    for item_id in moved_fields:
        item = on_target_fields[item_id]
        successor = item.superseded_by_id
        if (
            item.status is ItemStatus.SUPERSEDED
            and successor is not None
            and successor not in moved_field_set
            and (item_id, successor) not in merge_pairs
        ):
            conflicts.append(
                UnmergeConflict(
                    kind="superseded_after_merge",
                    item_type="field",
                    item_id=item_id,
                    name=item.name,
                    other_id=successor,
                )
            )
    for item_id in moved_assets:
        asset = on_target_assets[item_id]
        successor = asset.superseded_by_id
        if (
            asset.status is ItemStatus.SUPERSEDED
            and successor is not None
            and successor not in moved_asset_set
        ):
            conflicts.append(
                UnmergeConflict(
                    kind="superseded_after_merge",
                    item_type="asset",
                    item_id=item_id,
                    name=asset.name,
                    other_id=successor,
                )
            )

    # which profile holds each version afterwards, and which names are ACTIVE where
    every = {**{f.id: f for f in state.source_fields}, **on_target_fields}
    owner = {f.id: source_id for f in state.source_fields}
    for item in state.target_fields:
        owner[item.id] = source_id if item.id in moved_field_set else target_id
    active: set[tuple[UUID, str]] = {
        (owner[f.id], f.name) for f in every.values() if f.status is ItemStatus.ACTIVE
    }
    reactivate: list[UUID] = []
    for entry in record.superseded:
        loser = every.get(entry.loser_id)
        if loser is None:
            conflicts.append(
                UnmergeConflict(
                    kind="item_gone", item_type="field", item_id=entry.loser_id, name=entry.name
                )
            )
            continue
        if loser.status is not ItemStatus.SUPERSEDED or loser.superseded_by_id != entry.winner_id:
            conflicts.append(
                UnmergeConflict(
                    kind="loser_changed",
                    item_type="field",
                    item_id=loser.id,
                    name=entry.name,
                    other_id=loser.superseded_by_id,
                )
            )
            continue
        slot = (owner[loser.id], loser.name)
        if slot in active:
            continue  # something newer holds the name on that profile: nothing to restore
        active.add(slot)
        reactivate.append(loser.id)

    # identities: moved ones go back with their old flag; target flags the merge changed
    held = {(i.channel, i.channel_user_id): i for i in state.target_identities}
    updates: list[IdentityUpdate] = []
    restored: list[ChannelIdentity] = []
    leaving: set[tuple[Channel, str]] = set()
    for move in record.identities:
        key = (move.channel, move.channel_user_id)
        if not move.from_source:
            continue
        found = held.get(key)
        if found is None:
            conflicts.append(UnmergeConflict(kind="identity_gone", channel=move.channel))
            continue
        leaving.add(key)
        updates.append(
            IdentityUpdate(move.channel, move.channel_user_id, source_id, move.primary_before, True)
        )
        restored.append(found.model_copy(update={"primary": move.primary_before}))
    staying = [i for i in state.target_identities if (i.channel, i.channel_user_id) not in leaving]
    flags = {(i.channel, i.channel_user_id): i.primary for i in staying}
    for move in record.identities:
        key = (move.channel, move.channel_user_id)
        if move.from_source or key not in flags or flags[key] != move.primary_after:
            continue
        if move.primary_before and any(v for k, v in flags.items() if k != key):
            continue  # another identity became primary since: leave the flags as they are
        flags[key] = move.primary_before
        updates.append(
            IdentityUpdate(
                move.channel, move.channel_user_id, target_id, move.primary_before, False
            )
        )

    # consents: the moved ones leave the target (first equal match each), in their order;
    # compared without ip_address_sealed: the encryption wrapper re-seals a moved consent's
    # IP for the target after the merge (new nonce), the log keeps the source's envelope
    remaining = list(state.target_consents)
    back: list[Consent] = []
    for consent in record.moved_consents:
        wanted = _consent_key(consent)
        index = next((n for n, c in enumerate(remaining) if _consent_key(c) == wanted), None)
        if index is None:
            conflicts.append(UnmergeConflict(kind="consent_gone"))
            continue
        back.append(remaining.pop(index))

    result = UnmergeResult(
        merge_id=record.id,
        source_profile_id=source_id,
        target_profile_id=target_id,
        unmerged_at=now,
        restored_field_ids=moved_fields,
        restored_asset_ids=moved_assets,
        reactivated_field_ids=reactivate,
        restored_identities=restored,
        restored_consents=len(back),
        conflicts=conflicts,
    )
    return UnmergePlan(
        record=record.model_copy(update={"unmerged_at": now}),
        now=now,
        field_ids_to_source=tuple(moved_fields),
        asset_ids_to_source=tuple(moved_assets),
        reactivate_field_ids=tuple(reactivate),
        identities=tuple(updates),
        target_consents=tuple(remaining),
        source_consents=(*state.source_consents, *back),
        result=result,
    )


def _consent_key(consent: Consent) -> tuple[object, ...]:
    """What identifies a consent for unmerge: every attribute but ``ip_address_sealed``
    (an envelope: equal plaintext, different bytes after a re-seal)."""
    return (
        consent.consent_type,
        consent.granted,
        consent.granted_at,
        consent.revoked_at,
        consent.source_session_id,
        consent.ip_address,
    )
