"""The ``save`` rule: what a save of a profile aggregate writes, decided once for every provider.

A provider reads :class:`SaveState` inside its write transaction (or under its write lease),
calls :func:`plan_save` and applies the returned :class:`SavePlan` atomically. Every refusal
(:class:`~ccvault.errors.NotFoundError`, :class:`~ccvault.errors.IdentityConflictError`,
:class:`~ccvault.errors.ConflictError`, :class:`~ccvault.errors.ValidationError`) is raised
here, before the provider has written anything.

The rule, in full:

* **Profile.** A stored but soft-deleted (or merged-away) profile is not found: save never
  brings it back. Otherwise its attributes, channel identities and consents are replaced by
  the given ones (an identity no longer listed is released). At most one identity may be
  primary; an identity listed twice is refused.
* **Ownership.** The customer id or a listed identity held by another live profile is an
  :class:`~ccvault.errors.IdentityConflictError`; a field or asset id stored on another profile
  (live or not) is a :class:`~ccvault.errors.ConflictError`.
* **New items.** A field id not yet stored is a new version: stored ACTIVE, superseding the
  ACTIVE version of its name (``superseded_by_id`` = the new id, ``superseded_at`` and
  ``updated_at`` = ``now``). An asset id not yet stored is stored ACTIVE and supersedes
  nothing (as ``add_asset`` with its default ``supersede_existing=False``).
* **Stored items** are updated in place and keep their name (a rename is a
  :class:`~ccvault.errors.ConflictError`).
* **Stale saves.** *Save never changes a stored status it did not read as current.* The
  status of a stored item and its supersede links (``status``, ``superseded_by_id``,
  ``superseded_at``) always stay as stored; the caller's copy of them is ignored. An item the
  store holds ACTIVE is updated in place (its content) and stays ACTIVE. An item the store no
  longer holds ACTIVE — superseded by a newer version, expired by a sweep, orphaned, since
  the caller read it — is history: it is left exactly as stored, content included, and the
  rest of the save goes ahead. So a caller saving back a profile it read before a concurrent
  ``update_field``/``add_asset(..., supersede_existing=True)``/``mark_orphans``/expiry sweep
  neither revives the old version nor conflicts with the new one.

Nothing here performs I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TypeVar
from uuid import UUID

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    ProfileAsset,
    ProfileField,
)

__all__ = [
    "IdentityKey",
    "SavePlan",
    "SaveState",
    "StoredItem",
    "identity_key",
    "plan_save",
]

IdentityKey = tuple[Channel, str]
"""A channel identity as the store indexes it: (channel, channel_user_id)."""


def identity_key(identity: ChannelIdentity) -> IdentityKey:
    """The key of ``identity`` in :attr:`SaveState.identity_owners`."""
    return (identity.channel, identity.channel_user_id)


_I = TypeVar("_I", ProfileField, ProfileAsset)


@dataclass(frozen=True, slots=True)
class StoredItem:
    """What the store holds about one field version or asset the caller listed by id."""

    profile_id: UUID
    name: str
    status: ItemStatus
    superseded_by_id: UUID | None = None
    superseded_at: datetime | None = None


def _no_items() -> Mapping[UUID, StoredItem]:
    return MappingProxyType({})


def _no_identities() -> Mapping[IdentityKey, UUID]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SaveState:
    """What a provider read, inside its write transaction, before a save of one profile.

    ``exists``: a profile with this id is stored (live or not). ``gone``: it is stored but
    soft-deleted, merged away, or being merged. ``customer_owner``: the live profile holding
    the profile's ``customer_id``, if any. ``identity_owners``: the live owner of each listed
    identity that has one (identities nobody owns may be left out). ``fields``/``assets``:
    the stored item of each listed id that is stored anywhere in the tenant (ids not stored
    are left out).
    """

    exists: bool = False
    gone: bool = False
    customer_owner: UUID | None = None
    # keyed by (channel, channel user id): personal data, never in the repr
    identity_owners: Mapping[IdentityKey, UUID] = field(default_factory=_no_identities, repr=False)
    fields: Mapping[UUID, StoredItem] = field(default_factory=_no_items)
    assets: Mapping[UUID, StoredItem] = field(default_factory=_no_items)


@dataclass(frozen=True, slots=True)
class SavePlan:
    """The writes of one save, to apply in one atomic step.

    * ``profile``: the profile row to insert (``create``) or overwrite: id, tenant, customer
      id, verification level, timestamps. Its ``fields``/``assets``/histories are empty.
    * ``identities``: the profile's identities afterwards, in order; every other identity the
      profile holds is released. ``consents``: its consents afterwards, in order.
    * ``new_fields``: insert each ACTIVE; first supersede the ACTIVE version of its name
      (``status=SUPERSEDED``, ``superseded_by_id`` = the new id, ``superseded_at`` and
      ``updated_at`` = ``now``).
    * ``updated_fields``: overwrite each stored version by id with this content; its status
      and supersede links are already the stored ones.
    * ``kept_fields``: ids listed by the caller and left exactly as stored (stale copies).
    * ``new_assets`` (insert ACTIVE, supersede nothing), ``updated_assets``, ``kept_assets``:
      the same for assets.
    """

    profile: CustomerProfile
    create: bool
    now: datetime
    identities: tuple[ChannelIdentity, ...] = ()
    consents: tuple[Consent, ...] = ()
    new_fields: tuple[ProfileField, ...] = ()
    updated_fields: tuple[ProfileField, ...] = ()
    kept_fields: tuple[UUID, ...] = ()
    new_assets: tuple[ProfileAsset, ...] = ()
    updated_assets: tuple[ProfileAsset, ...] = ()
    kept_assets: tuple[UUID, ...] = ()


def _lifecycle_as_stored(stored: StoredItem) -> dict[str, object]:
    return {
        "status": stored.status,
        "superseded_by_id": stored.superseded_by_id,
        "superseded_at": stored.superseded_at,
    }


_NEW_ITEM = {"status": ItemStatus.ACTIVE, "superseded_by_id": None, "superseded_at": None}


def plan_save(state: SaveState, profile: CustomerProfile, now: datetime) -> SavePlan:
    """The plan for saving ``profile`` over ``state``; raises before anything is written.

    See the module docstring for the rule. ``now`` is the moment superseded versions get.
    """
    if state.gone:
        raise errors.NotFoundError(f"profile {profile.id} is deleted")
    if state.customer_owner is not None and state.customer_owner != profile.id:
        raise errors.IdentityConflictError(
            f"customer id {profile.customer_id} belongs to another live profile"
        )
    seen: set[IdentityKey] = set()
    for identity in profile.channel_identities:
        key = identity_key(identity)
        if key in seen:
            raise errors.ValidationError(f"identity {identity.channel.value} is listed twice")
        seen.add(key)
        owner = state.identity_owners.get(key)
        if owner is not None and owner != profile.id:
            raise errors.IdentityConflictError(
                f"a {identity.channel.value} identity belongs to another live profile"
            )
    if sum(identity.primary for identity in profile.channel_identities) > 1:
        raise errors.ValidationError("at most one channel identity may be primary")

    new_fields, updated_fields, kept_fields = _plan_items(
        "field", list(profile.fields.values()), state.fields, profile.id
    )
    new_assets, updated_assets, kept_assets = _plan_items(
        "asset", list(profile.assets), state.assets, profile.id
    )
    base = profile.model_copy(
        update={"fields": {}, "assets": [], "field_history": {}, "asset_history": []}
    )
    return SavePlan(
        profile=base,
        create=not state.exists,
        now=now,
        identities=tuple(profile.channel_identities),
        consents=tuple(profile.consents),
        new_fields=tuple(new_fields),
        updated_fields=tuple(updated_fields),
        kept_fields=tuple(kept_fields),
        new_assets=tuple(new_assets),
        updated_assets=tuple(updated_assets),
        kept_assets=tuple(kept_assets),
    )


def _plan_items(
    kind: str, items: list[_I], stored: Mapping[UUID, StoredItem], profile_id: UUID
) -> tuple[list[_I], list[_I], list[UUID]]:
    """Split listed items into new, updated in place and kept as stored; check ownership."""
    new: list[_I] = []
    updated: list[_I] = []
    kept: list[UUID] = []
    ids: set[UUID] = set()
    for item in items:
        if item.id in ids:
            raise errors.ValidationError(f"{kind} id {item.id} is listed twice")
        ids.add(item.id)
        found = stored.get(item.id)
        if found is None:
            new.append(item.model_copy(update=_NEW_ITEM))
            continue
        if found.profile_id != profile_id:
            raise errors.ConflictError(f"{kind} id {item.id} belongs to another profile")
        if found.name != item.name:
            raise errors.ConflictError(f"{kind} id {item.id} keeps its stored name")
        if found.status is ItemStatus.ACTIVE:
            updated.append(item.model_copy(update=_lifecycle_as_stored(found)))
        else:
            kept.append(item.id)
    return new, updated, kept
