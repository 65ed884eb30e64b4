"""Channel identities: what linking one does, given who owns it.

A provider reads the live owner of the identity (inside the atomic step that would write it)
and asks these functions what to do; the storage mechanics (a unique index deciding a race,
a retry after a lost one) stay the provider's. Pure: no I/O.

* :func:`link_outcome`: linking an identity to a live profile is ``True`` (store it, as a
  secondary identity) when no live profile owns it, ``False`` when this profile already
  does, and an :class:`~ccvault.errors.IdentityConflictError` when another live profile does
  (the message names the channel, never the channel user id).
* ``get_or_create`` leaves no decision to a provider: the public method builds the
  candidate (a new profile whose only identity is primary) and the provider's hook stores
  it only if no live profile owns the identity, an atomic insert-if-absent (storage).
"""

from __future__ import annotations

from uuid import UUID

from ccvault import errors
from ccvault.models import Channel

__all__ = ["identity_conflict", "link_outcome"]


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
