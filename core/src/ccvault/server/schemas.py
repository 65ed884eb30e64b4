"""Request and response bodies of the HTTP API that are not vault models themselves."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ccvault.models import (
    Channel,
    ChannelIdentity,
    GapFillResult,
    ItemStatus,
    ItemType,
    JsonValue,
    ProfileAsset,
    ProfileField,
    RequiredLevel,
    Session,
)

ShortText = Annotated[str, StringConstraints(min_length=1, max_length=255)]

__all__ = [
    "Count",
    "Deleted",
    "DerivedItems",
    "GapFillRequest",
    "GapFillResponse",
    "HasDependents",
    "Health",
    "IdentityLookup",
    "ItemCounts",
    "LineageStep",
    "LinkChannelRequest",
    "Linked",
    "MergeRequest",
    "MissingFieldsRequest",
    "PayloadRewrite",
    "RewriteRequest",
    "Saved",
    "StatusFilter",
    "VerifyRequest",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StatusFilter(StrEnum):
    """A status to read, or ``any``."""

    ACTIVE = "active"
    SUPERSEDED = "superseded"
    EXPIRED = "expired"
    ORPHANED = "orphaned"
    ANY = "any"

    def status(self) -> ItemStatus | None:
        return None if self is StatusFilter.ANY else ItemStatus(self.value)


class Saved(_Body):
    """The id of what was written."""

    id: UUID


class Deleted(_Body):
    deleted: bool


class Linked(_Body):
    """True when the identity was newly linked, False when the profile already had it."""

    linked: bool


class Count(_Body):
    count: int


class OrphanPage(_Body):
    """One keyset batch of mark_orphans: ``marked`` items, ``examined`` derived items read
    (at most the limit), ``resume_after`` the opaque position to pass as ``after`` next
    (None: done)."""

    marked: int
    examined: int | None
    resume_after: str | None


class HasDependents(_Body):
    has_dependents: bool


class Health(_Body):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class IdentityLookup(_Body):
    """A channel identity, sent in the body so it never appears in a URL or an access log."""

    channel: Channel
    channel_user_id: ShortText = Field(repr=False)  # personal data
    include_history: bool = False
    #: statuses as stored (expiry not applied at read time)
    as_stored: bool = False


class SubjectRequest(_Body):
    """A data subject: exactly one of channel + channel_user_id, customer_id, profile_id
    (sent in the body so an identity never appears in a URL or an access log)."""

    channel: Channel | None = None
    channel_user_id: ShortText | None = Field(default=None, repr=False)  # personal data
    customer_id: UUID | None = None
    profile_id: UUID | None = None


class SubjectProfilesRequest(_Body):
    """The lookup of the remote client's ``_find_subject_profiles`` hook: an identity, or
    (``channel`` None) a customer id."""

    channel: Channel | None = None
    channel_user_id: ShortText | None = Field(default=None, repr=False)  # personal data
    customer_id: UUID | None = None


class EraseProfilesRequest(_Body):
    """The remote client's ``_erase_subject`` hook: the planned profiles and the merge log
    entries the plan read (a changed log: 409, nothing erased)."""

    profile_ids: Annotated[list[UUID], Field(max_length=1000)]
    merge_ids: Annotated[list[UUID], Field(max_length=100_000)]


class Erased(_Body):
    erased: int


class EraseSubjectRequest(SubjectRequest):
    """A data subject to erase; ``dry_run``: report only, erase nothing."""

    dry_run: bool = False


class LinkChannelRequest(ChannelIdentity):
    """A channel identity to link, with the optional per-channel limit of link_channel:
    at the limit, the oldest identity of that channel that is neither primary nor verified
    is evicted (none evictable: 409 ``conflict``)."""

    max_per_channel: Annotated[int, Field(ge=1, le=100)] | None = None


class MergeRequest(_Body):
    source_profile_id: UUID
    target_profile_id: UUID
    #: recorded in the merge log where the store keeps one
    merge_id: UUID | None = None
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None
    actor: Annotated[str, StringConstraints(max_length=255)] | None = None


class VerifyRequest(_Body):
    """Mark the ACTIVE version verified: a new version with the same value, verified."""

    verification_method: ShortText
    verified_by: ShortText | None = None


class MissingFieldsRequest(_Body):
    scenario_id: UUID
    step_id: UUID | None = None
    #: ``null``: every level
    required_level: RequiredLevel | None = RequiredLevel.HARD


class GapFillRequest(_Body):
    """Fill a scenario's unmet requirements from the session's variables and conversation."""

    session: Session
    scenario_id: UUID
    step_id: UUID | None = None
    required_level: RequiredLevel | None = None
    persist: bool = True


class GapFillResponse(_Body):
    results: list[GapFillResult]
    #: True when a ``block`` requirement is still unmet: the scenario cannot proceed
    blocked: bool


class LineageStep(_Body):
    """One item of a derivation chain (root first, the item itself last)."""

    id: UUID
    type: ItemType
    name: str
    source_metadata: dict[str, JsonValue] = Field(default_factory=dict, repr=False)


class DerivedItems(_Body):
    fields: list[ProfileField]
    assets: list[ProfileAsset]


class ItemCounts(_Body):
    fields: dict[str, int]
    assets: dict[str, int]


class PayloadRewrite(_Body):
    # personal data: never in the repr
    field_id: UUID
    value: JsonValue = Field(repr=False)
    source_metadata: dict[str, JsonValue] = Field(default_factory=dict, repr=False)


class RewriteRequest(_Body):
    payloads: list[PayloadRewrite] = Field(max_length=10_000)
