"""Profiles and what they own: fields, assets, channels, merge, missing fields, export, purge."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Query

from ccvault.models import (
    ChannelIdentity,
    CustomerProfile,
    ProfileAsset,
    ProfileField,
    ScenarioFieldRequirement,
)
from ccvault.rules.erasure import ErasureReport
from ccvault.server.clock import stored_view
from ccvault.server.deps import Admin, PiiReader, Reader, Store, Writer
from ccvault.server.errors import ApiError, ErrorBody
from ccvault.server.pii import Masker
from ccvault.server.routes._common import AssetNameParam, FieldNameParam, check_tenant, found
from ccvault.server.schemas import (
    Deleted,
    Erased,
    EraseProfilesRequest,
    EraseSubjectRequest,
    IdentityLookup,
    LinkChannelRequest,
    Linked,
    MergeRequest,
    MissingFieldsRequest,
    Saved,
    StatusFilter,
    SubjectProfilesRequest,
    SubjectRequest,
    VerifyRequest,
)

__all__ = ["router"]

router = APIRouter()
PROFILE = "profile not found"

History = Annotated[bool, Query(description="include every version and every asset")]
AsStored = Annotated[
    bool,
    Query(
        description="statuses as stored: expiry is not applied at read time (what a "
        "remote ProfileStore's hooks need; its public methods apply it once)"
    ),
]


# ---------------------------------------------------------------------------------------
# profiles
# ---------------------------------------------------------------------------------------


@router.post("/profiles/get-or-create", tags=["profiles"], response_model=CustomerProfile)
async def get_or_create(body: IdentityLookup, caller: Writer, store: Store) -> CustomerProfile:
    """The profile owning this channel identity, created (with it as primary) when none does."""
    profile = await store.get_or_create(caller.tenant_id, body.channel, body.channel_user_id)
    return (await Masker.for_caller(store, caller)).profile(profile)


@router.post("/profiles/lookup", tags=["profiles"], response_model=CustomerProfile)
async def get_by_channel_identity(
    body: IdentityLookup, caller: Reader, store: Store
) -> CustomerProfile:
    """The live profile owning this channel identity (sent in the body, never in the URL)."""
    with stored_view(body.as_stored):
        profile = await store.get_by_channel_identity(
            caller.tenant_id,
            body.channel,
            body.channel_user_id,
            include_history=body.include_history,
        )
    return (await Masker.for_caller(store, caller)).profile(found(profile, PROFILE))


@router.get("/profiles/by-customer/{customer_id}", tags=["profiles"])
async def get_by_customer_id(
    customer_id: UUID,
    caller: Reader,
    store: Store,
    include_history: History = False,
    as_stored: AsStored = False,
) -> CustomerProfile:
    """The live profile with this customer id."""
    with stored_view(as_stored):
        profile = await store.get_by_customer_id(
            caller.tenant_id, customer_id, include_history=include_history
        )
    return (await Masker.for_caller(store, caller)).profile(found(profile, PROFILE))


@router.get("/profiles/{profile_id}", tags=["profiles"])
async def get_by_id(
    profile_id: UUID,
    caller: Reader,
    store: Store,
    include_history: History = False,
    as_stored: AsStored = False,
) -> CustomerProfile:
    """The live profile with this id."""
    with stored_view(as_stored):
        profile = await store.get_by_id(
            caller.tenant_id, profile_id, include_history=include_history
        )
    return (await Masker.for_caller(store, caller)).profile(found(profile, PROFILE))


@router.put("/profiles", tags=["profiles"])
async def save_profile(body: CustomerProfile, caller: Writer, store: Store) -> Saved:
    """Create or update the profile aggregate (attributes, identities, consents replaced;
    fields and assets upserted by id, never deleted)."""
    check_tenant(caller, body.tenant_id)
    return Saved(id=await store.save(body))


@router.delete("/profiles/{profile_id}", tags=["profiles"])
async def delete_profile(profile_id: UUID, caller: Writer, store: Store) -> Deleted:
    """Soft-delete the profile and release its identities (``deleted``: it was live)."""
    return Deleted(deleted=await store.delete(caller.tenant_id, profile_id))


# ---------------------------------------------------------------------------------------
# fields
# ---------------------------------------------------------------------------------------


@router.post("/profiles/{profile_id}/fields", tags=["fields"])
async def update_field(
    profile_id: UUID,
    body: ProfileField,
    caller: Writer,
    store: Store,
    supersede_existing: bool = True,
) -> Saved:
    """Store a new ACTIVE version of the field; the previous one becomes SUPERSEDED."""
    field_id = await store.update_field(
        caller.tenant_id, profile_id, body, supersede_existing=supersede_existing
    )
    return Saved(id=field_id)


@router.get("/profiles/{profile_id}/fields/{field_name}", tags=["fields"])
async def get_field(
    profile_id: UUID,
    field_name: FieldNameParam,
    caller: Reader,
    store: Store,
    status: StatusFilter = StatusFilter.ACTIVE,
    as_stored: AsStored = False,
) -> ProfileField:
    """The most recent version of the field with this status (``any``: whatever status)."""
    with stored_view(as_stored):
        item = await store.get_field(
            caller.tenant_id, profile_id, field_name, status=status.status()
        )
    return (await Masker.for_caller(store, caller)).field(found(item, "field not found"))


@router.get("/profiles/{profile_id}/fields/{field_name}/history", tags=["fields"])
async def get_field_history(
    profile_id: UUID,
    field_name: FieldNameParam,
    caller: Reader,
    store: Store,
    as_stored: AsStored = False,
) -> list[ProfileField]:
    """Every version of the field, newest first (empty for an unknown profile or field)."""
    with stored_view(as_stored):
        versions = await store.get_field_history(caller.tenant_id, profile_id, field_name)
    return (await Masker.for_caller(store, caller)).fields(versions)


@router.post("/profiles/{profile_id}/fields/{field_name}/verify", tags=["fields"])
async def verify_field(
    profile_id: UUID,
    field_name: FieldNameParam,
    body: VerifyRequest,
    caller: Writer,
    store: Store,
) -> Saved:
    """Record that the ACTIVE value was verified: a new, verified version with the same value
    and lineage supersedes it (history keeps the unverified one)."""
    current = found(
        await store.get_field(caller.tenant_id, profile_id, field_name), "field not found"
    )
    now = store.now()
    verified = current.model_copy(
        update={
            "id": uuid4(),
            "verified": True,
            "verification_method": body.verification_method,
            "verified_by": body.verified_by,
            "verified_at": now,
            "requires_confirmation": False,
            "collected_at": max(now, current.collected_at),
        }
    )
    return Saved(id=await store.update_field(caller.tenant_id, profile_id, verified))


# ---------------------------------------------------------------------------------------
# assets
# ---------------------------------------------------------------------------------------


@router.post("/profiles/{profile_id}/assets", tags=["assets"])
async def add_asset(
    profile_id: UUID,
    body: ProfileAsset,
    caller: Writer,
    store: Store,
    supersede_existing: bool = False,
) -> Saved:
    """Store an ACTIVE asset (a document's metadata and where it is stored)."""
    asset_id = await store.add_asset(
        caller.tenant_id, profile_id, body, supersede_existing=supersede_existing
    )
    return Saved(id=asset_id)


@router.get("/profiles/{profile_id}/assets/by-name/{asset_name}", tags=["assets"])
async def get_asset_by_name(
    profile_id: UUID,
    asset_name: AssetNameParam,
    caller: Reader,
    store: Store,
    status: StatusFilter = StatusFilter.ACTIVE,
) -> ProfileAsset:
    """The most recent asset of that name with this status."""
    asset = await store.get_asset_by_name(
        caller.tenant_id, profile_id, asset_name, status=status.status()
    )
    return found(asset, "asset not found")


@router.get("/profiles/{profile_id}/assets/{asset_id}", tags=["assets"])
async def get_asset(profile_id: UUID, asset_id: UUID, caller: Reader, store: Store) -> ProfileAsset:
    """The asset with this id on this profile, whatever its status."""
    return found(await store.get_asset(caller.tenant_id, profile_id, asset_id), "asset not found")


# ---------------------------------------------------------------------------------------
# channels and merge
# ---------------------------------------------------------------------------------------


@router.post("/profiles/{profile_id}/channels", tags=["channels"])
async def link_channel(
    profile_id: UUID, body: LinkChannelRequest, caller: Writer, store: Store
) -> Linked:
    """Link a (secondary) channel identity to the profile; ``max_per_channel`` (optional,
    1..100) evicts the oldest identity of that channel that is neither primary nor verified
    when the new one would exceed it (none evictable: 409)."""
    identity = ChannelIdentity.model_validate(body.model_dump(exclude={"max_per_channel"}))
    linked = await store.link_channel(
        caller.tenant_id, profile_id, identity, max_per_channel=body.max_per_channel
    )
    return Linked(linked=linked)


@router.post("/profiles/merge", tags=["channels"])
async def merge_profiles(body: MergeRequest, caller: Writer, store: Store) -> Saved:
    """Merge the source profile into the target (atomically); the source is soft-deleted.
    Returns the target's id."""
    extra: dict[str, Any] = {
        name: value
        for name, value in (
            ("merge_id", body.merge_id),
            ("reason", body.reason),
            ("actor", body.actor),
        )
        if value is not None
    }
    await store.merge_profiles(
        caller.tenant_id, body.source_profile_id, body.target_profile_id, **extra
    )
    return Saved(id=body.target_profile_id)


_NO_LOG: dict[int | str, dict[str, Any]] = {
    501: {"model": ErrorBody, "description": "This vault keeps no merge log"}
}


@router.get("/profiles/{profile_id}/merges", tags=["channels"], responses=_NO_LOG)
async def get_merge_log(profile_id: UUID, caller: Reader, store: Store) -> list[dict[str, Any]]:
    """The merge log entries whose source or target is this profile, oldest first (ids,
    names and flags of what each merge moved and superseded; never a field value)."""
    method = getattr(store, "get_merge_log", None)
    if method is None:
        raise ApiError(501, "not_implemented", "this vault keeps no merge log")
    records = await method(caller.tenant_id, profile_id)
    return [record.model_dump(mode="json") for record in records]


@router.post("/merges/{merge_id}/unmerge", tags=["channels"], responses=_NO_LOG)
async def unmerge(merge_id: UUID, caller: Writer, store: Store) -> dict[str, Any]:
    """Undo one merge atomically: what it moved goes back to the source (live again); what
    changed since is reported in ``conflicts``. Already undone or blocked: 409."""
    method = getattr(store, "unmerge", None)
    if method is None:
        raise ApiError(501, "not_implemented", "this vault keeps no merge log")
    result = await method(caller.tenant_id, merge_id)
    dumped: dict[str, Any] = result.model_dump(mode="json")
    return dumped


# ---------------------------------------------------------------------------------------
# requirements met / missing
# ---------------------------------------------------------------------------------------


@router.post("/profiles/{profile_id}/missing", tags=["requirements"])
async def get_missing_fields(
    profile_id: UUID, body: MissingFieldsRequest, caller: Reader, store: Store
) -> list[ScenarioFieldRequirement]:
    """The scenario's (or step's) requirements this profile does not meet yet."""
    profile = found(await store.get_by_id(caller.tenant_id, profile_id), PROFILE)
    level = body.required_level.value if body.required_level is not None else None
    return await store.get_missing_fields(
        caller.tenant_id, profile, body.scenario_id, step_id=body.step_id, required_level=level
    )


# ---------------------------------------------------------------------------------------
# privacy: export and erasure
# ---------------------------------------------------------------------------------------


@router.get("/profiles/{profile_id}/export", tags=["privacy"])
async def export_profile(
    profile_id: UUID, caller: PiiReader, store: Store, as_stored: AsStored = False
) -> dict[str, Any]:
    """Everything held about the customer, history included (needs ``pii:read``)."""
    with stored_view(as_stored):
        return await store.export_profile(caller.tenant_id, profile_id)


@router.post("/profiles/{profile_id}/purge", tags=["privacy"])
async def purge_profile(profile_id: UUID, caller: Admin, store: Store) -> Deleted:
    """Erase the profile for good, with everything it owns (needs ``admin``)."""
    return Deleted(deleted=await store.purge_profile(caller.tenant_id, profile_id))


@router.post("/subjects/erase", tags=["privacy"], response_model=ErasureReport)
async def erase_subject(body: EraseSubjectRequest, caller: Admin, store: Store) -> ErasureReport:
    """Erase a data subject: every profile the identity, customer id or profile ever
    belonged to (live, soft-deleted, merged away, merge targets), with all they hold; the
    report holds ids and counts only. ``dry_run`` erases nothing (needs ``admin``)."""
    return await store.erase_subject(
        caller.tenant_id,
        channel=body.channel,
        channel_user_id=body.channel_user_id,
        customer_id=body.customer_id,
        profile_id=body.profile_id,
        dry_run=body.dry_run,
    )


@router.post("/subjects/export", tags=["privacy"])
async def export_subject(body: SubjectRequest, caller: PiiReader, store: Store) -> dict[str, Any]:
    """Everything held about a data subject: the profiles ``subjects/erase`` would erase,
    with full history, and their merge log (needs ``pii:read``)."""
    return await store.export_subject(
        caller.tenant_id,
        channel=body.channel,
        channel_user_id=body.channel_user_id,
        customer_id=body.customer_id,
        profile_id=body.profile_id,
    )


@router.post("/subjects/profiles", tags=["privacy"])
async def find_subject_profiles(
    body: SubjectProfilesRequest, caller: PiiReader, store: Store
) -> list[UUID]:
    """Every profile, live or soft-deleted, holding the identity (released ones too) or
    the customer id: the remote client's ``_find_subject_profiles`` hook (needs
    ``pii:read``)."""
    if (body.channel is None) == (body.customer_id is None) or (body.channel is None) != (
        body.channel_user_id is None
    ):
        raise ApiError(422, "validation", "give channel and channel_user_id, or customer_id")
    return await store._find_subject_profiles(
        caller.tenant_id, body.channel, body.channel_user_id, body.customer_id
    )


@router.post("/subjects/erase-profiles", tags=["privacy"])
async def erase_subject_profiles(body: EraseProfilesRequest, caller: Admin, store: Store) -> Erased:
    """Erase planned profiles in one step, refused (409) if their merge log is no longer
    ``merge_ids``: the remote client's ``_erase_subject`` hook (needs ``admin``)."""
    erased = await store._erase_subject(caller.tenant_id, body.profile_ids, body.merge_ids)
    return Erased(erased=erased)
