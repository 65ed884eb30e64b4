"""Lineage: where an item came from, what derives from it."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from ccvault.models import ItemType
from ccvault.server.clock import stored_view
from ccvault.server.deps import Reader, Store
from ccvault.server.pii import Masker
from ccvault.server.schemas import DerivedItems, HasDependents, LineageStep

__all__ = ["router"]

router = APIRouter(tags=["lineage"])


@router.get("/lineage/{item_type}/{item_id}/chain")
async def get_derivation_chain(
    item_type: ItemType, item_id: UUID, caller: Reader, store: Store
) -> list[LineageStep]:
    """The chain the item derives from: root first, the item itself last ([] when unknown)."""
    chain = await store.get_derivation_chain(caller.tenant_id, item_id, item_type.value)
    masked = (await Masker.for_caller(store, caller)).lineage(chain)
    return [LineageStep.model_validate(entry) for entry in masked]


@router.get("/lineage/{item_id}/derived")
async def get_derived_items(
    item_id: UUID, caller: Reader, store: Store, as_stored: bool = False
) -> DerivedItems:
    """Every field and asset derived directly from this item, oldest first."""
    with stored_view(as_stored):
        derived = await store.get_derived_items(caller.tenant_id, item_id)
    masker = await Masker.for_caller(store, caller)
    return DerivedItems(fields=masker.fields(derived["fields"]), assets=derived["assets"])


@router.get("/lineage/{item_id}/has-dependents")
async def check_has_dependents(item_id: UUID, caller: Reader, store: Store) -> HasDependents:
    """Whether an ACTIVE field or asset derives directly from this item."""
    return HasDependents(has_dependents=await store.check_has_dependents(caller.tenant_id, item_id))
