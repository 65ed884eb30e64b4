"""Expiry: a field past ``expires_at`` is never served ACTIVE; the sweep is idempotent."""

from __future__ import annotations

from uuid import UUID

from ccvault.models import ItemStatus
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import make_field, make_requirement, new_profile, ts

__all__ = ["ExpiryContract"]


class ExpiryContract(ContractBase):
    async def _expired(
        self, store: ProfileStore, tenant: UUID, name: str = "otp"
    ) -> tuple[UUID, UUID]:
        profile = await new_profile(store, tenant)
        field_id = await store.update_field(
            tenant,
            profile.id,
            make_field(name, "123456", collected_at=ts(-7200), expires_at=ts(-3600)),
        )
        return profile.id, field_id

    async def test_expired_field_is_not_served_by_get_field_before_the_sweep(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, _ = await self._expired(store, tenant)
        assert await store.get_field(tenant, profile_id, "otp") is None
        assert await store.get_field(tenant, profile_id, "otp", status=ItemStatus.ACTIVE) is None

    async def test_expired_field_reads_as_expired_before_the_sweep(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, field_id = await self._expired(store, tenant)
        found = await store.get_field(tenant, profile_id, "otp", status=ItemStatus.EXPIRED)
        assert found is not None and found.id == field_id and found.status is ItemStatus.EXPIRED
        any_status = await store.get_field(tenant, profile_id, "otp", status=None)
        assert any_status is not None and any_status.status is ItemStatus.EXPIRED

    async def test_expired_field_is_not_in_profile_fields_before_the_sweep(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, _ = await self._expired(store, tenant)
        profile = await store.get_by_id(tenant, profile_id)
        assert profile is not None and "otp" not in profile.fields
        by_customer = await store.get_by_customer_id(tenant, profile.customer_id)
        assert by_customer is not None and "otp" not in by_customer.fields
        identity = profile.channel_identities[0]
        by_identity = await store.get_by_channel_identity(
            tenant, identity.channel, identity.channel_user_id
        )
        assert by_identity is not None and "otp" not in by_identity.fields

    async def test_expired_field_shows_as_expired_in_history(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, field_id = await self._expired(store, tenant)
        history = await store.get_field_history(tenant, profile_id, "otp")
        assert [(v.id, v.status) for v in history] == [(field_id, ItemStatus.EXPIRED)]
        profile = await store.get_by_id(tenant, profile_id, include_history=True)
        assert profile is not None
        assert [v.status for v in profile.field_history["otp"]] == [ItemStatus.EXPIRED]

    async def test_expired_field_counts_as_missing(
        self, store: ProfileStore, tenant: UUID, agent: UUID, scenario: UUID
    ) -> None:
        profile_id, _ = await self._expired(store, tenant)
        await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "otp"))
        profile = await store.get_by_id(tenant, profile_id)
        assert profile is not None
        missing = await store.get_missing_fields(tenant, profile, scenario)
        assert [r.field_name for r in missing] == ["otp"]

    async def test_sweep_counts_then_returns_zero(self, store: ProfileStore, tenant: UUID) -> None:
        profile_id, field_id = await self._expired(store, tenant)
        await store.update_field(
            tenant, profile_id, make_field("pin", "1", expires_at=ts(-1), collected_at=ts(-10))
        )
        assert await store.expire_stale_fields(tenant, profile_id) == 2
        assert await store.expire_stale_fields(tenant, profile_id) == 0
        assert await store.expire_stale_fields(tenant) == 0
        stored = await store.get_field(tenant, profile_id, "otp", status=ItemStatus.EXPIRED)
        assert stored is not None and stored.id == field_id

    async def test_sweep_of_the_whole_tenant_covers_every_profile(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        first, _ = await self._expired(store, tenant)
        second, _ = await self._expired(store, tenant)
        assert await store.expire_stale_fields(tenant) == 2
        for profile_id in (first, second):
            assert await store.get_field(tenant, profile_id, "otp", status=None) is not None
        counts = await store.count_items_by_status(tenant)
        assert counts["fields"]["expired"] == 2 and counts["fields"]["active"] == 0

    async def test_sweep_of_one_profile_leaves_the_others(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        first, _ = await self._expired(store, tenant)
        second, _ = await self._expired(store, tenant)
        assert await store.expire_stale_fields(tenant, first) == 1
        counts = await store.count_items_by_status(tenant)
        assert counts["fields"]["expired"] == 1 and counts["fields"]["active"] == 1
        assert await store.expire_stale_fields(tenant, second) == 1

    async def test_unexpired_fields_are_served_and_not_swept(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        field_id = await store.update_field(
            tenant, profile.id, make_field("otp", "1", expires_at=ts(3600))
        )
        assert await store.expire_stale_fields(tenant) == 0
        found = await store.get_field(tenant, profile.id, "otp")
        assert found is not None and found.id == field_id and found.status is ItemStatus.ACTIVE

    async def test_superseded_versions_past_expiry_are_not_swept(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(
            tenant, profile.id, make_field("otp", "1", expires_at=ts(-1), collected_at=ts(-9))
        )
        await store.update_field(tenant, profile.id, make_field("otp", "2"))
        assert await store.expire_stale_fields(tenant) == 0
        history = await store.get_field_history(tenant, profile.id, "otp")
        assert [v.status for v in history] == [ItemStatus.ACTIVE, ItemStatus.SUPERSEDED]

    async def test_a_new_version_replaces_an_expired_one(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile_id, _ = await self._expired(store, tenant)
        await store.expire_stale_fields(tenant)
        fresh = await store.update_field(tenant, profile_id, make_field("otp", "654321"))
        found = await store.get_field(tenant, profile_id, "otp")
        assert found is not None and found.id == fresh
        profile = await store.get_by_id(tenant, profile_id)
        assert profile is not None and profile.fields["otp"].value == "654321"
