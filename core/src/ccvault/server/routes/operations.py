"""Operator calls within the key's tenant: hard delete, sweeps, counts, payload rewrites."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from ccvault.batches import MAX_BATCH_SIZE, MAX_CURSOR_LENGTH, BatchProgress
from ccvault.models import ItemType
from ccvault.server.deps import Admin, Reader, Store, Writer
from ccvault.server.schemas import Count, Deleted, ItemCounts, OrphanPage, RewriteRequest

__all__ = ["router"]

router = APIRouter(tags=["operations"])


class KeyInfo(BaseModel):
    """The calling key: the tenant every call of it works in, and its scopes."""

    key_id: str
    tenant_id: UUID
    scopes: list[str]


@router.get("/key")
async def whoami(caller: Reader) -> KeyInfo:
    """Which tenant and scopes the API key in use has (clients check it before calling)."""
    return KeyInfo(
        key_id=caller.key.key_id, tenant_id=caller.tenant_id, scopes=sorted(caller.key.scopes)
    )


class ExpireRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: omitted: every profile of the tenant
    profile_id: UUID | None = None
    #: set: one batch of at most this many fields (one transaction), for a client that runs
    #: the batch loop itself; omitted: the whole job, in the server's batches
    limit: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)


@router.delete("/items/{item_type}/{item_id}")
async def delete_item(item_type: ItemType, item_id: UUID, caller: Admin, store: Store) -> Deleted:
    """Hard-delete one field version or asset (409 while ACTIVE items derive from it)."""
    return Deleted(deleted=await store.delete_item(caller.tenant_id, item_id, item_type.value))


@router.post("/operations/expire-stale")
async def expire_stale_fields(body: ExpireRequest, caller: Writer, store: Store) -> Count:
    """Mark every ACTIVE field past expires_at EXPIRED (one profile or the whole tenant)."""
    if body.limit is not None:
        return Count(
            count=await store.expire_stale_fields(
                caller.tenant_id, body.profile_id, batch_size=body.limit, max_batches=1
            )
        )
    return Count(count=await store.expire_stale_fields(caller.tenant_id, body.profile_id))


@router.post("/operations/mark-orphans")
async def mark_orphans(
    caller: Admin,
    store: Store,
    limit: Annotated[int | None, Query(ge=1, le=MAX_BATCH_SIZE)] = None,
) -> Count:
    """Mark ORPHANED every item whose source field or asset no longer exists (``limit``:
    batches of at most that many examined items, one transaction each; the whole job runs,
    since a batch that marks fewer than ``limit`` does not mean none is left after it)."""
    if limit is not None:
        return Count(count=await store.mark_orphans(caller.tenant_id, batch_size=limit))
    return Count(count=await store.mark_orphans(caller.tenant_id))


@router.post("/operations/mark-orphans/page")
async def mark_orphans_page(
    caller: Admin,
    store: Store,
    limit: Annotated[int, Query(ge=1, le=MAX_BATCH_SIZE)],
    after: Annotated[str | None, Query(min_length=1, max_length=MAX_CURSOR_LENGTH)] = None,
) -> OrphanPage:
    """One keyset batch of mark_orphans, one transaction: at most ``limit`` derived items
    examined after the position ``after`` (a previous page's ``resume_after``; omitted: the
    start), the orphans among them marked."""
    reports: list[BatchProgress] = []
    marked = await store.mark_orphans(
        caller.tenant_id,
        batch_size=limit,
        max_batches=1,
        start_after=after,
        progress=reports.append,
    )
    last = reports[-1]
    return OrphanPage(marked=marked, examined=last.examined, resume_after=last.resume_after)


@router.get("/operations/counts")
async def count_items_by_status(caller: Reader, store: Store) -> ItemCounts:
    """How many field versions and assets the tenant holds in each status."""
    return ItemCounts.model_validate(await store.count_items_by_status(caller.tenant_id))


@router.get("/operations/profile-ids")
async def list_profile_ids(caller: Admin, store: Store) -> list[UUID]:
    """Every profile id of the tenant, live or soft-deleted (for operator sweeps)."""
    return await store.list_profile_ids(caller.tenant_id)


@router.get("/operations/tenants")
async def list_tenant_ids(caller: Admin, store: Store) -> list[UUID]:
    """The tenants this key can see that hold a profile: its own, or none."""
    return [caller.tenant_id] if await store.list_profile_ids(caller.tenant_id) else []


@router.post("/profiles/{profile_id}/rewrite-payloads")
async def rewrite_field_payloads(
    profile_id: UUID, body: RewriteRequest, caller: Admin, store: Store
) -> Count:
    """Overwrite in place value and source_metadata of existing versions (key rotation)."""
    payloads: dict[UUID, tuple[Any, dict[str, Any]]] = {
        item.field_id: (item.value, item.source_metadata) for item in body.payloads
    }
    return Count(count=await store.rewrite_field_payloads(caller.tenant_id, profile_id, payloads))
