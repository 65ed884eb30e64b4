"""Assets: add_asset, get_asset, get_asset_by_name, supersede."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import ItemStatus, SourceType
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import make_asset, new_profile, snapshot, ts

__all__ = ["AssetsContract"]


class AssetsContract(ContractBase):
    async def test_add_asset_stores_it_active_and_every_attribute_round_trips(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        asset = make_asset(
            "passport_scan",
            asset_type="identity_document",
            mime_type="application/pdf",
            size_bytes=123_456,
            checksum="ab" * 32,
            uploaded_in_session_id=uuid4(),
            uploaded_in_scenario_id=uuid4(),
            source_item_id=uuid4(),
            source_item_type=SourceType.TOOL,
            derived_from_tool="ocr",
            verified=True,
            verification_result={"match": True, "score": 0.99},
            retention_policy="7y",
            expires_at=ts(86400),
            analysis_field_ids=[uuid4(), uuid4()],
            status=ItemStatus.ORPHANED,
        )
        asset_id = await store.add_asset(tenant, profile.id, asset)
        assert asset_id == asset.id
        found = await store.get_asset(tenant, profile.id, asset_id)
        assert found is not None
        assert found.status is ItemStatus.ACTIVE
        assert found.model_dump(exclude={"status"}) == asset.model_dump(exclude={"status"})

    async def test_get_asset_unknown_is_none(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        await store.add_asset(tenant, profile.id, make_asset())
        assert await store.get_asset(tenant, profile.id, uuid4()) is None

    async def test_get_asset_of_another_profile_is_none(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        owner = await new_profile(store, tenant)
        other = await new_profile(store, tenant)
        asset_id = await store.add_asset(tenant, owner.id, make_asset())
        assert await store.get_asset(tenant, other.id, asset_id) is None

    async def test_supersede_existing_supersedes_the_active_asset_of_that_name(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        old = await store.add_asset(tenant, profile.id, make_asset("contract"))
        new = await store.add_asset(
            tenant, profile.id, make_asset("contract"), supersede_existing=True
        )
        stored_old = await store.get_asset(tenant, profile.id, old)
        assert stored_old is not None
        assert stored_old.status is ItemStatus.SUPERSEDED
        assert stored_old.superseded_by_id == new and stored_old.superseded_at is not None
        current = await store.get_asset_by_name(tenant, profile.id, "contract")
        assert current is not None and current.id == new

    async def test_without_supersede_the_existing_asset_stays_active(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        first = await store.add_asset(tenant, profile.id, make_asset("photo", uploaded_at=ts(-9)))
        second = await store.add_asset(tenant, profile.id, make_asset("photo", uploaded_at=ts(-1)))
        for asset_id in (first, second):
            stored = await store.get_asset(tenant, profile.id, asset_id)
            assert stored is not None and stored.status is ItemStatus.ACTIVE
        newest = await store.get_asset_by_name(tenant, profile.id, "photo")
        assert newest is not None and newest.id == second

    async def test_supersede_only_touches_that_name(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        keep = await store.add_asset(tenant, profile.id, make_asset("selfie"))
        await store.add_asset(tenant, profile.id, make_asset("contract"), supersede_existing=True)
        stored = await store.get_asset(tenant, profile.id, keep)
        assert stored is not None and stored.status is ItemStatus.ACTIVE

    async def test_get_asset_returns_any_status(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        old = await store.add_asset(tenant, profile.id, make_asset("contract"))
        await store.add_asset(tenant, profile.id, make_asset("contract"), supersede_existing=True)
        stored = await store.get_asset(tenant, profile.id, old)
        assert stored is not None and stored.id == old

    async def test_get_asset_by_name_status_filter(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        old = await store.add_asset(tenant, profile.id, make_asset("contract", uploaded_at=ts(-20)))
        new = await store.add_asset(
            tenant,
            profile.id,
            make_asset("contract", uploaded_at=ts(-10)),
            supersede_existing=True,
        )
        superseded = await store.get_asset_by_name(
            tenant, profile.id, "contract", status=ItemStatus.SUPERSEDED
        )
        assert superseded is not None and superseded.id == old
        newest = await store.get_asset_by_name(tenant, profile.id, "contract", status=None)
        assert newest is not None and newest.id == new
        assert (
            await store.get_asset_by_name(tenant, profile.id, "contract", status=ItemStatus.EXPIRED)
            is None
        )

    async def test_get_asset_by_name_unknown_is_none(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.add_asset(tenant, profile.id, make_asset("contract"))
        assert await store.get_asset_by_name(tenant, profile.id, "selfie") is None
        assert await store.get_asset_by_name(tenant, profile.id, "selfie", status=None) is None

    async def test_add_asset_to_an_unknown_profile_is_not_found(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        with pytest.raises(errors.NotFoundError):
            await store.add_asset(tenant, uuid4(), make_asset())
        assert (await store.count_items_by_status(tenant))["assets"]["active"] == 0

    async def test_reusing_a_stored_asset_id_is_a_conflict(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        asset = make_asset("contract")
        await store.add_asset(tenant, profile.id, asset)
        before = await snapshot(store, tenant, profiles=(profile.id,))
        with pytest.raises(errors.ConflictError):
            await store.add_asset(tenant, profile.id, asset, supersede_existing=True)
        assert await snapshot(store, tenant, profiles=(profile.id,)) == before

    async def test_profile_lists_active_assets_only(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.add_asset(tenant, profile.id, make_asset("contract"))
        current = await store.add_asset(
            tenant, profile.id, make_asset("contract"), supersede_existing=True
        )
        selfie = await store.add_asset(tenant, profile.id, make_asset("selfie"))
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        assert {a.id for a in found.assets} == {current, selfie}
