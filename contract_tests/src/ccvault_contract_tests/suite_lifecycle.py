"""Beyond the seed: purge (erasure), export (portability), delete_item, mark_orphans,
list_tenant_ids, count_items_by_status, and the schema version (``schema_status``,
``migrate``)."""

from __future__ import annotations

import json
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import Consent, ItemStatus, SourceType
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import make_asset, make_field, new_profile, snapshot, ts

__all__ = ["LifecycleContract"]


class LifecycleContract(ContractBase):
    async def _rich_profile(self, store: ProfileStore, tenant: UUID) -> tuple[UUID, list[UUID]]:
        """A profile with versions, assets, lineage and consents; returns (id, item ids)."""
        profile = await new_profile(store, tenant)
        profile.consents = [Consent(consent_type="terms", granted=True, granted_at=ts())]
        await store.save(profile)
        doc = await store.add_asset(tenant, profile.id, make_asset("payslip"))
        v1 = await store.update_field(
            tenant,
            profile.id,
            make_field("income", 1, source_item_id=doc, source_item_type=SourceType.PROFILE_ASSET),
        )
        v2 = await store.update_field(tenant, profile.id, make_field("income", 2))
        email = await store.update_field(tenant, profile.id, make_field("email", "a@x.org"))
        return profile.id, [doc, v1, v2, email]

    # ---------------------------------------------------------------- purge

    async def test_purge_is_true_once_then_false(self, store: ProfileStore, tenant: UUID) -> None:
        profile_id, _ = await self._rich_profile(store, tenant)
        assert await store.purge_profile(tenant, profile_id) is True
        assert await store.purge_profile(tenant, profile_id) is False
        assert await store.purge_profile(tenant, uuid4()) is False

    async def test_purge_leaves_no_profile_to_read(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        identity = profile.channel_identities[0]
        await store.purge_profile(tenant, profile.id)
        assert await store.get_by_id(tenant, profile.id) is None
        assert await store.get_by_customer_id(tenant, profile.customer_id) is None
        assert (
            await store.get_by_channel_identity(tenant, identity.channel, identity.channel_user_id)
            is None
        )
        with pytest.raises(errors.NotFoundError):
            await store.export_profile(tenant, profile.id)

    async def test_purge_leaves_no_item_history_or_lineage(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, (doc, v1, v2, email) = await self._rich_profile(store, tenant)
        await store.purge_profile(tenant, profile_id)
        for name in ("income", "email"):
            assert await store.get_field(tenant, profile_id, name, status=None) is None
            assert await store.get_field_history(tenant, profile_id, name) == []
        assert await store.get_asset(tenant, profile_id, doc) is None
        assert await store.get_asset_by_name(tenant, profile_id, "payslip", status=None) is None
        for item in (v1, v2, email):
            assert await store.get_derivation_chain(tenant, item, "profile_field") == []
        assert await store.get_derivation_chain(tenant, doc, "profile_asset") == []
        assert await store.get_derived_items(tenant, doc) == {"fields": [], "assets": []}
        assert await store.check_has_dependents(tenant, doc) is False
        counts = await store.count_items_by_status(tenant)
        assert sum(counts["fields"].values()) == 0 and sum(counts["assets"].values()) == 0

    async def test_purge_removes_items_from_derived_item_listings(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        keeper = await new_profile(store, tenant)
        source = await store.update_field(tenant, keeper.id, make_field("shared_source", "x"))
        doomed = await new_profile(store, tenant)
        await store.update_field(
            tenant,
            doomed.id,
            make_field(
                "copy", "x", source_item_id=source, source_item_type=SourceType.PROFILE_FIELD
            ),
        )
        await store.purge_profile(tenant, doomed.id)
        assert await store.get_derived_items(tenant, source) == {"fields": [], "assets": []}
        assert await store.check_has_dependents(tenant, source) is False

    async def test_purge_of_a_soft_deleted_profile(self, store: ProfileStore, tenant: UUID) -> None:
        profile_id, _ = await self._rich_profile(store, tenant)
        await store.delete(tenant, profile_id)
        assert await store.purge_profile(tenant, profile_id) is True
        with pytest.raises(errors.NotFoundError):
            await store.export_profile(tenant, profile_id)

    async def test_purge_frees_identities(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        identity = profile.channel_identities[0]
        await store.purge_profile(tenant, profile.id)
        fresh = await store.get_or_create(tenant, identity.channel, identity.channel_user_id)
        assert fresh.id != profile.id

    async def test_purge_leaves_other_profiles_alone(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        keep_id, _ = await self._rich_profile(store, tenant)
        gone_id, _ = await self._rich_profile(store, tenant)
        before = await snapshot(store, tenant, profiles=(keep_id,))
        await store.purge_profile(tenant, gone_id)
        after = json.loads(await snapshot(store, tenant, profiles=(keep_id,)))
        assert after["profiles"] == json.loads(before)["profiles"]

    # ---------------------------------------------------------------- export

    async def test_export_is_json_serialisable_and_complete(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, (doc, v1, v2, email) = await self._rich_profile(store, tenant)
        document = await store.export_profile(tenant, profile_id)
        text = json.dumps(document)
        assert str(profile_id) in text
        body = json.loads(text)["profile"]
        assert body["id"] == str(profile_id)
        assert [v["id"] for v in body["field_history"]["income"]] == [str(v2), str(v1)]
        assert body["fields"]["email"]["id"] == str(email)
        assert [a["id"] for a in body["asset_history"]] == [str(doc)]
        assert [c["consent_type"] for c in body["consents"]] == ["terms"]
        assert len(body["channel_identities"]) == 1

    async def test_export_of_a_soft_deleted_profile(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, _ = await self._rich_profile(store, tenant)
        await store.delete(tenant, profile_id)
        document = await store.export_profile(tenant, profile_id)
        assert json.loads(json.dumps(document))["profile"]["id"] == str(profile_id)

    async def test_export_of_an_unknown_profile_is_not_found(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        with pytest.raises(errors.NotFoundError):
            await store.export_profile(tenant, uuid4())

    # ---------------------------------------------------------------- delete_item

    async def test_delete_item_removes_one_field_version(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        old = await store.update_field(tenant, profile.id, make_field("city", "A"))
        new = await store.update_field(tenant, profile.id, make_field("city", "B"))
        assert await store.delete_item(tenant, old, "profile_field") is True
        assert await store.delete_item(tenant, old, "profile_field") is False
        history = await store.get_field_history(tenant, profile.id, "city")
        assert [v.id for v in history] == [new]
        assert await store.get_derivation_chain(tenant, old, "profile_field") == []

    async def test_deleting_the_active_version_leaves_no_active_version(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        old = await store.update_field(tenant, profile.id, make_field("city", "A"))
        new = await store.update_field(tenant, profile.id, make_field("city", "B"))
        assert await store.delete_item(tenant, new, "profile_field") is True
        assert await store.get_field(tenant, profile.id, "city") is None
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None and "city" not in found.fields
        history = await store.get_field_history(tenant, profile.id, "city")
        assert [(v.id, v.status) for v in history] == [(old, ItemStatus.SUPERSEDED)]

    async def test_delete_item_removes_an_asset(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        asset_id = await store.add_asset(tenant, profile.id, make_asset())
        assert await store.delete_item(tenant, asset_id, "profile_asset") is True
        assert await store.get_asset(tenant, profile.id, asset_id) is None
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None and found.assets == []

    async def test_delete_item_with_active_dependents_is_refused(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        doc = await store.add_asset(tenant, profile.id, make_asset("payslip"))
        await store.update_field(
            tenant,
            profile.id,
            make_field("income", 1, source_item_id=doc, source_item_type=SourceType.PROFILE_ASSET),
        )
        before = await snapshot(store, tenant, profiles=(profile.id,))
        with pytest.raises(errors.DependentsError):
            await store.delete_item(tenant, doc, "profile_asset")
        assert await snapshot(store, tenant, profiles=(profile.id,)) == before

    async def test_delete_item_is_allowed_once_dependents_are_superseded(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        doc = await store.add_asset(tenant, profile.id, make_asset("payslip"))
        await store.update_field(
            tenant,
            profile.id,
            make_field("income", 1, source_item_id=doc, source_item_type=SourceType.PROFILE_ASSET),
        )
        await store.update_field(tenant, profile.id, make_field("income", 2))
        assert await store.delete_item(tenant, doc, "profile_asset") is True

    async def test_delete_item_of_the_wrong_type_or_unknown_is_false(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        field_id = await store.update_field(tenant, profile.id, make_field())
        assert await store.delete_item(tenant, uuid4(), "profile_field") is False
        assert await store.delete_item(tenant, field_id, "profile_asset") is False
        assert await store.get_field(tenant, profile.id, "email") is not None

    # ---------------------------------------------------------------- mark_orphans

    async def test_mark_orphans_marks_items_whose_source_is_gone(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        owner = await new_profile(store, tenant)
        doc = await store.add_asset(tenant, owner.id, make_asset("payslip"))
        other = await new_profile(store, tenant)
        field_id = await store.update_field(
            tenant,
            other.id,
            make_field("income", 1, source_item_id=doc, source_item_type=SourceType.PROFILE_ASSET),
        )
        asset_id = await store.add_asset(
            tenant,
            other.id,
            make_asset("summary", source_item_id=doc, source_item_type=SourceType.PROFILE_ASSET),
        )
        assert await store.mark_orphans(tenant) == 0
        await store.purge_profile(tenant, owner.id)
        assert await store.mark_orphans(tenant) == 2
        assert await store.mark_orphans(tenant) == 0
        orphan = await store.get_field(tenant, other.id, "income", status=ItemStatus.ORPHANED)
        assert orphan is not None and orphan.id == field_id
        asset = await store.get_asset(tenant, other.id, asset_id)
        assert asset is not None and asset.status is ItemStatus.ORPHANED
        found = await store.get_by_id(tenant, other.id)
        assert found is not None and "income" not in found.fields and found.assets == []

    async def test_mark_orphans_after_delete_item(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        root = await store.update_field(tenant, profile.id, make_field("root_value", 1))
        child = await store.update_field(
            tenant,
            profile.id,
            make_field("child", 1, source_item_id=root, source_item_type=SourceType.PROFILE_FIELD),
        )
        await store.update_field(tenant, profile.id, make_field("child", 2))
        await store.delete_item(tenant, root, "profile_field")
        assert await store.mark_orphans(tenant) == 1
        history = await store.get_field_history(tenant, profile.id, "child")
        assert {v.id: v.status for v in history}[child] is ItemStatus.ORPHANED

    async def test_mark_orphans_ignores_session_tool_and_external_sources(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        for kind in (SourceType.SESSION, SourceType.TOOL, SourceType.EXTERNAL):
            await store.update_field(
                tenant,
                profile.id,
                make_field(f"from_{kind.value}", 1, source_item_id=uuid4(), source_item_type=kind),
            )
        await store.update_field(tenant, profile.id, make_field("plain", 1))
        assert await store.mark_orphans(tenant) == 0

    async def test_mark_orphans_marks_dangling_references(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(
            tenant,
            profile.id,
            make_field(
                "dangling", 1, source_item_id=uuid4(), source_item_type=SourceType.PROFILE_FIELD
            ),
        )
        assert await store.mark_orphans(tenant) == 1
        counts = await store.count_items_by_status(tenant)
        assert counts["fields"]["orphaned"] == 1 and counts["fields"]["active"] == 0

    # ---------------------------------------------------------------- operations

    async def test_list_tenant_ids_lists_tenants_with_profiles_sorted(
        self, store: ProfileStore
    ) -> None:
        tenants = [uuid4() for _ in range(3)]
        for tenant in tenants:
            await new_profile(store, tenant)
        listed = await store.list_tenant_ids()
        assert listed == sorted(listed)
        assert set(tenants) <= set(listed)
        assert uuid4() not in listed
        assert all(isinstance(t, UUID) for t in listed)

    async def test_list_tenant_ids_includes_soft_deleted_only_tenants(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.delete(tenant, profile.id)
        assert tenant in await store.list_tenant_ids()

    async def test_list_tenant_ids_forgets_a_tenant_whose_profiles_are_purged(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        assert tenant in await store.list_tenant_ids()
        await store.purge_profile(tenant, profile.id)
        assert tenant not in await store.list_tenant_ids()

    async def test_list_tenant_ids_ignores_schema_only_tenants(
        self, store: ProfileStore, tenant: UUID, agent: UUID
    ) -> None:
        from ccvault_contract_tests.helpers import make_definition

        await store.save_field_definition(make_definition(tenant, agent, "email"))
        assert tenant not in await store.list_tenant_ids()

    async def test_count_items_by_status(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("a_field", 1))
        await store.update_field(tenant, profile.id, make_field("a_field", 2))
        await store.update_field(
            tenant, profile.id, make_field("b_field", 1, expires_at=ts(-1), collected_at=ts(-9))
        )
        await store.expire_stale_fields(tenant)
        await store.add_asset(tenant, profile.id, make_asset("doc"))
        counts = await store.count_items_by_status(tenant)
        statuses = {s.value for s in ItemStatus}
        assert set(counts) == {"fields", "assets"}
        assert set(counts["fields"]) == statuses and set(counts["assets"]) == statuses
        assert counts["fields"] == {"active": 1, "superseded": 1, "expired": 1, "orphaned": 0}
        assert counts["assets"] == {"active": 1, "superseded": 0, "expired": 0, "orphaned": 0}

    async def test_count_items_of_an_empty_tenant_is_all_zero(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        counts = await store.count_items_by_status(tenant)
        assert all(n == 0 for kind in counts.values() for n in kind.values())

    # ---------------------------------------------------------------- schema version

    async def test_an_open_store_is_at_the_latest_schema_and_migrate_applies_nothing(
        self, store: ProfileStore
    ) -> None:
        """An opened store is exactly at the schema its code knows (``setup()`` refuses any
        other); ``migrate()`` on it is a no-op, and a dry run lists nothing."""
        status = await store.schema_status()
        assert status.up_to_date and not status.newer
        assert status.current == status.latest and status.pending == ()
        report = await store.migrate()
        assert report.applied == () and report.status.up_to_date and not report.dry_run
        dry = await store.migrate(dry_run=True)
        assert dry.dry_run and dry.applied == ()
