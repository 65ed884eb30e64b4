"""Tenant isolation: every method, called with another tenant's id, sees and changes nothing.

Each test builds a populated profile in ``tenant`` and then calls one method as
``other_tenant`` with the first tenant's ids, checking the answer and that a snapshot of
the first tenant is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import pytest

from ccvault import errors
from ccvault.models import Channel, ChannelIdentity, CustomerProfile, SourceType
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    make_asset,
    make_definition,
    make_field,
    make_requirement,
    new_profile,
    snapshot,
    ts,
)

__all__ = ["IsolationContract"]


@dataclass
class _World:
    profile: CustomerProfile
    field_id: UUID
    derived_id: UUID
    asset_id: UUID
    agent: UUID
    scenario: UUID
    expired_id: UUID

    @property
    def identity(self) -> ChannelIdentity:
        return self.profile.channel_identities[0]


class IsolationContract(ContractBase):
    @pytest.fixture
    async def world(self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID) -> _World:
        profile = await new_profile(store, tenant)
        asset_id = await store.add_asset(tenant, profile.id, make_asset("payslip"))
        field_id = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "income", 1, source_item_id=asset_id, source_item_type=SourceType.PROFILE_ASSET
            ),
        )
        derived_id = await store.update_field(
            tenant,
            profile.id,
            make_field(
                "band", "A", source_item_id=field_id, source_item_type=SourceType.PROFILE_FIELD
            ),
        )
        expired_id = await store.update_field(
            tenant, profile.id, make_field("otp", "1", expires_at=ts(-1), collected_at=ts(-9))
        )
        await store.save_field_definition(make_definition(tenant, agent, "income"))
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "email"))
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        return _World(found, field_id, derived_id, asset_id, agent, scenario, expired_id)

    async def _snap(self, store: ProfileStore, tenant: UUID, world: _World) -> str:
        return await snapshot(
            store,
            tenant,
            profiles=(world.profile.id,),
            agents=(world.agent,),
            scenarios=(world.scenario,),
        )

    # ---------------------------------------------------------------- reads

    async def test_get_by_id_of_another_tenant_is_none(
        self, store: ProfileStore, world: _World, other_tenant: UUID
    ) -> None:
        assert await store.get_by_id(other_tenant, world.profile.id) is None
        assert await store.get_by_id(other_tenant, world.profile.id, include_history=True) is None

    async def test_get_by_customer_id_of_another_tenant_is_none(
        self, store: ProfileStore, world: _World, other_tenant: UUID
    ) -> None:
        assert await store.get_by_customer_id(other_tenant, world.profile.customer_id) is None

    async def test_get_by_channel_identity_of_another_tenant_is_none(
        self, store: ProfileStore, world: _World, other_tenant: UUID
    ) -> None:
        identity = world.identity
        assert (
            await store.get_by_channel_identity(
                other_tenant, identity.channel, identity.channel_user_id
            )
            is None
        )

    async def test_get_or_create_in_another_tenant_makes_a_separate_profile(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        before = await self._snap(store, tenant, world)
        identity = world.identity
        theirs = await store.get_or_create(other_tenant, identity.channel, identity.channel_user_id)
        assert theirs.id != world.profile.id and theirs.tenant_id == other_tenant
        assert theirs.fields == {}
        assert await self._snap(store, tenant, world) == before

    async def test_get_field_and_history_of_another_tenant_are_empty(
        self, store: ProfileStore, world: _World, other_tenant: UUID
    ) -> None:
        assert await store.get_field(other_tenant, world.profile.id, "income") is None
        assert await store.get_field(other_tenant, world.profile.id, "income", status=None) is None
        assert await store.get_field_history(other_tenant, world.profile.id, "income") == []

    async def test_get_asset_of_another_tenant_is_none(
        self, store: ProfileStore, world: _World, other_tenant: UUID
    ) -> None:
        assert await store.get_asset(other_tenant, world.profile.id, world.asset_id) is None
        assert (
            await store.get_asset_by_name(other_tenant, world.profile.id, "payslip", status=None)
            is None
        )

    async def test_lineage_of_another_tenant_is_empty(
        self, store: ProfileStore, world: _World, other_tenant: UUID
    ) -> None:
        assert (
            await store.get_derivation_chain(other_tenant, world.derived_id, "profile_field") == []
        )
        assert await store.get_derivation_chain(other_tenant, world.asset_id, "profile_asset") == []
        assert await store.get_derived_items(other_tenant, world.asset_id) == {
            "fields": [],
            "assets": [],
        }
        assert await store.check_has_dependents(other_tenant, world.asset_id) is False

    async def test_definitions_of_another_tenant_are_invisible(
        self, store: ProfileStore, world: _World, other_tenant: UUID
    ) -> None:
        assert (
            await store.get_field_definitions(other_tenant, world.agent, enabled_only=False) == []
        )
        assert await store.get_field_definition(other_tenant, world.agent, "income") is None

    async def test_requirements_of_another_tenant_are_invisible(
        self, store: ProfileStore, world: _World, other_tenant: UUID
    ) -> None:
        assert await store.get_scenario_requirements(other_tenant, world.scenario) == []

    async def test_missing_fields_for_a_profile_of_another_tenant_are_empty(
        self, store: ProfileStore, world: _World, other_tenant: UUID
    ) -> None:
        assert await store.get_missing_fields(other_tenant, world.profile, world.scenario) == []

    async def test_export_of_another_tenant_is_not_found(
        self, store: ProfileStore, world: _World, other_tenant: UUID
    ) -> None:
        with pytest.raises(errors.NotFoundError):
            await store.export_profile(other_tenant, world.profile.id)

    async def test_counts_of_another_tenant_are_zero(
        self, store: ProfileStore, world: _World, other_tenant: UUID
    ) -> None:
        counts = await store.count_items_by_status(other_tenant)
        assert all(n == 0 for kind in counts.values() for n in kind.values())
        assert other_tenant not in await store.list_tenant_ids()

    # ---------------------------------------------------------------- writes

    async def test_update_field_as_another_tenant_is_not_found_and_changes_nothing(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        before = await self._snap(store, tenant, world)
        with pytest.raises(errors.NotFoundError):
            await store.update_field(other_tenant, world.profile.id, make_field("income", 99))
        assert await self._snap(store, tenant, world) == before

    async def test_add_asset_as_another_tenant_is_not_found_and_changes_nothing(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        before = await self._snap(store, tenant, world)
        with pytest.raises(errors.NotFoundError):
            await store.add_asset(
                other_tenant, world.profile.id, make_asset("payslip"), supersede_existing=True
            )
        assert await self._snap(store, tenant, world) == before

    async def test_delete_as_another_tenant_is_false_and_changes_nothing(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        before = await self._snap(store, tenant, world)
        assert await store.delete(other_tenant, world.profile.id) is False
        assert await self._snap(store, tenant, world) == before

    async def test_link_channel_as_another_tenant_is_not_found_and_changes_nothing(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        before = await self._snap(store, tenant, world)
        with pytest.raises(errors.NotFoundError):
            await store.link_channel(
                other_tenant,
                world.profile.id,
                ChannelIdentity(channel=Channel.WEB, channel_user_id="cookie-1"),
            )
        assert await self._snap(store, tenant, world) == before

    async def test_merge_as_another_tenant_is_not_found_and_changes_nothing(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        mine = await new_profile(store, other_tenant)
        before = await self._snap(store, tenant, world)
        with pytest.raises(errors.NotFoundError):
            await store.merge_profiles(other_tenant, world.profile.id, mine.id)
        with pytest.raises(errors.NotFoundError):
            await store.merge_profiles(other_tenant, mine.id, world.profile.id)
        assert await self._snap(store, tenant, world) == before
        assert await store.get_by_id(other_tenant, mine.id) is not None

    async def test_save_in_another_tenant_cannot_touch_this_one(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        before = await self._snap(store, tenant, world)
        copy = CustomerProfile(
            tenant_id=other_tenant,
            channel_identities=[world.identity.model_copy()],
            customer_id=world.profile.customer_id,
        )
        await store.save(copy)
        assert await self._snap(store, tenant, world) == before
        theirs = await store.get_by_customer_id(other_tenant, world.profile.customer_id)
        assert theirs is not None and theirs.id == copy.id

    async def test_expire_as_another_tenant_sweeps_nothing_here(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        assert await store.expire_stale_fields(other_tenant) == 0
        assert await store.expire_stale_fields(other_tenant, world.profile.id) == 0
        assert await store.expire_stale_fields(tenant) == 1

    async def test_definition_writes_as_another_tenant_change_nothing(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        before = await self._snap(store, tenant, world)
        assert await store.delete_field_definition(other_tenant, world.agent, "income") is False
        theirs = await store.save_field_definition(
            make_definition(other_tenant, world.agent, "income", display_name="Theirs")
        )
        assert await self._snap(store, tenant, world) == before
        mine = await store.get_field_definition(tenant, world.agent, "income")
        assert mine is not None and mine.id != theirs

    async def test_requirement_writes_as_another_tenant_change_nothing(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        before = await self._snap(store, tenant, world)
        assert await store.delete_scenario_requirements(other_tenant, world.scenario) == 0
        await store.save_scenario_requirement(
            make_requirement(other_tenant, world.agent, world.scenario, "email")
        )
        assert await self._snap(store, tenant, world) == before

    async def test_purge_as_another_tenant_is_false_and_changes_nothing(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        before = await self._snap(store, tenant, world)
        assert await store.purge_profile(other_tenant, world.profile.id) is False
        assert await self._snap(store, tenant, world) == before

    async def test_delete_item_as_another_tenant_is_false_and_changes_nothing(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        before = await self._snap(store, tenant, world)
        assert await store.delete_item(other_tenant, world.derived_id, "profile_field") is False
        assert await store.delete_item(other_tenant, world.asset_id, "profile_asset") is False
        assert await self._snap(store, tenant, world) == before

    async def test_mark_orphans_as_another_tenant_changes_nothing(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        before = await self._snap(store, tenant, world)
        assert await store.mark_orphans(other_tenant) == 0
        assert await self._snap(store, tenant, world) == before

    async def test_an_item_of_another_tenant_is_not_a_lineage_source(
        self, store: ProfileStore, tenant: UUID, world: _World, other_tenant: UUID
    ) -> None:
        """A link to another tenant's item is dangling: chains stop, mark_orphans marks it."""
        mine = await new_profile(store, other_tenant)
        crossing = await store.update_field(
            other_tenant,
            mine.id,
            make_field(
                "copy", 1, source_item_id=world.field_id, source_item_type=SourceType.PROFILE_FIELD
            ),
        )
        chain = await store.get_derivation_chain(other_tenant, crossing, "profile_field")
        assert [e["id"] for e in chain] == [crossing]
        assert await store.mark_orphans(other_tenant) == 1
        derived = await store.get_derived_items(tenant, world.field_id)
        assert [f.id for f in derived["fields"]] == [world.derived_id]
