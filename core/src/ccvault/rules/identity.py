"""Channel identities: what linking one does, given who owns it.

A provider reads the live owner of the identity (inside the atomic step that would write it)
and asks these functions what to do; the storage mechanics (a unique index deciding a race,
a retry after a lost one) stay the provider's. Pure: no I/O.

* :func:`link_outcome`: linking an identity to a live profile is ``True`` (store it, as a
  secondary identity) when no live profile owns it, ``False`` when this profile already
  does, and an :class:`~ccvault.errors.IdentityConflictError` when another live profile does
  (the message names the channel, never the channel user id).
* :func:`channel_eviction`: the optional per-channel limit of ``link_channel``
  (``max_per_channel``). When linking a *new* identity would leave the profile with more
  than ``max_per_channel`` identities on that channel, the oldest one (``created_at``, ties
  by ``channel_user_id``) that is neither primary nor verified is evicted: it leaves the
  profile and is released as ``delete`` releases identities (it resolves to nobody; the
  same channel user can start afresh or be linked elsewhere). The limit only ever evicts
  one, the one making room for the new identity: a profile already over the limit (linked
  without one, or by save) keeps its extra identities. None can be evicted (every one is
  primary or verified): :class:`~ccvault.errors.ConflictError` naming only the channel, and
  nothing is written. Linking an identity the profile already has evicts nothing
  (:func:`link_outcome` is False first).
* ``get_or_create`` leaves no decision to a provider: the public method builds the
  candidate (a new profile whose only identity is primary) and the provider's hook stores
  it only if no live profile owns the identity, an atomic insert-if-absent (storage).
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from ccvault import errors
from ccvault.models import Channel, ChannelIdentity

__all__ = ["MAX_PER_CHANNEL_LIMIT", "channel_eviction", "identity_conflict", "link_outcome"]

#: the largest ``max_per_channel`` accepted (the smallest is 1)
MAX_PER_CHANNEL_LIMIT = 100


def identity_conflict(channel: Channel, *, what: str = "profile") -> errors.IdentityConflictError:
    """The error for an identity another live profile owns; it names only the channel."""
    return errors.IdentityConflictError(
        f"a {channel.value} identity belongs to another live {what}"
    )


def link_outcome(profile_id: UUID, owner: UUID | None, channel: Channel) -> bool:
    """What linking an identity of ``channel`` to the live ``profile_id`` does, given the
    identity's live ``owner`` (None: nobody): True = store it on the profile (newly
    linked), False = already there. Another owner: IdentityConflictError."""
    if owner is None:
        return True
    if owner == profile_id:
        return False
    raise identity_conflict(channel)


def channel_eviction(
    held: Iterable[ChannelIdentity], channel: Channel, max_per_channel: int | None
) -> ChannelIdentity | None:
    """Which identity linking a *new* identity of ``channel`` evicts, given the identities
    the profile ``held`` (any channel; only ``channel``'s count) and the limit (None: no
    limit). None: nothing is evicted (no limit, or room left). Every one on the channel
    primary or verified: ConflictError (it names only the channel)."""
    if max_per_channel is None:
        return None
    on_channel = [i for i in held if i.channel == channel]
    if len(on_channel) < max_per_channel:
        return None
    evictable = [i for i in on_channel if not i.primary and not i.verified]
    if not evictable:
        raise errors.ConflictError(
            f"the {channel.value} identities of the profile are at the limit of "
            f"{max_per_channel} and none can be evicted (all primary or verified)"
        )
    return min(evictable, key=lambda i: (i.created_at, i.channel_user_id))
