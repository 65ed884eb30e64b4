"""Channels and merge: link_channel, merge_profiles and its conflict rule."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import Channel, ChannelIdentity, Consent, ItemStatus, SourceType
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    assert_unbroken_chain,
    make_asset,
    make_field,
    new_profile,
    snapshot,
    ts,
    unique_user,
)

__all__ = ["ChannelsContract"]


def _identity(channel: Channel = Channel.EMAIL) -> ChannelIdentity:
    return ChannelIdentity(channel=channel, channel_user_id=unique_user("user-"), created_at=ts())


class ChannelsContract(ContractBase):
    # ---------------------------------------------------------------- link_channel

    async def test_link_channel_links_a_new_identity(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        identity = _identity()
        assert await store.link_channel(tenant, profile.id, identity) is True
        owner = await store.get_by_channel_identity(
            tenant, identity.channel, identity.channel_user_id
        )
        assert owner is not None and owner.id == profile.id
        assert len(owner.channel_identities) == 2

    async def test_link_channel_already_on_the_profile_is_false(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        identity = _identity()
        await store.link_channel(tenant, profile.id, identity)
        assert await store.link_channel(tenant, profile.id, identity) is False
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None and len(found.channel_identities) == 2

    async def test_link_channel_owned_by_another_profile_is_a_conflict(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        owner = await new_profile(store, tenant)
        other = await new_profile(store, tenant)
        before = await snapshot(store, tenant, profiles=(owner.id, other.id))
        taken = owner.channel_identities[0].model_copy(update={"primary": False})
        with pytest.raises(errors.IdentityConflictError):
            await store.link_channel(tenant, other.id, taken)
        assert await snapshot(store, tenant, profiles=(owner.id, other.id)) == before

    async def test_link_channel_to_an_unknown_profile_is_not_found(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        identity = _identity()
        with pytest.raises(errors.NotFoundError):
            await store.link_channel(tenant, uuid4(), identity)
        assert (
            await store.get_by_channel_identity(tenant, identity.channel, identity.channel_user_id)
            is None
        )

    async def test_an_identity_released_by_delete_can_be_linked(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        gone = await new_profile(store, tenant)
        await store.delete(tenant, gone.id)
        keeper = await new_profile(store, tenant)
        released = gone.channel_identities[0].model_copy(update={"primary": False})
        assert await store.link_channel(tenant, keeper.id, released) is True
        owner = await store.get_by_channel_identity(
            tenant, released.channel, released.channel_user_id
        )
        assert owner is not None and owner.id == keeper.id

    # ---------------------------------------------------------------- merge

    async def test_merge_returns_true_and_soft_deletes_the_source(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        assert await store.merge_profiles(tenant, source.id, target.id) is True
        assert await store.get_by_id(tenant, source.id) is None
        assert await store.get_by_customer_id(tenant, source.customer_id) is None
        assert await store.delete(tenant, source.id) is False
        assert await store.get_by_id(tenant, target.id) is not None

    async def test_merge_moves_identities_to_the_target(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant, Channel.SMS)
        target = await new_profile(store, tenant, Channel.WHATSAPP)
        extra = _identity(Channel.SLACK)
        await store.link_channel(tenant, source.id, extra)
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await store.get_by_id(tenant, target.id)
        assert merged is not None
        keys = {(i.channel, i.channel_user_id) for i in merged.channel_identities}
        assert keys == {
            (i.channel, i.channel_user_id)
            for i in (*source.channel_identities, *target.channel_identities, extra)
        }
        for identity in (*source.channel_identities, extra):
            owner = await store.get_by_channel_identity(
                tenant, identity.channel, identity.channel_user_id
            )
            assert owner is not None and owner.id == target.id

    async def test_merge_moves_fields_with_their_ids_and_history(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        old = await store.update_field(tenant, source.id, make_field("city", "Lyon"))
        new = await store.update_field(tenant, source.id, make_field("city", "Nice"))
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await store.get_by_id(tenant, target.id, include_history=True)
        assert merged is not None
        assert merged.fields["city"].id == new
        assert [v.id for v in merged.field_history["city"]] == [new, old]
        assert_unbroken_chain(merged.field_history["city"])

    async def test_merge_moves_assets_with_their_ids(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        asset_id = await store.add_asset(tenant, source.id, make_asset("selfie"))
        await store.merge_profiles(tenant, source.id, target.id)
        moved = await store.get_asset(tenant, target.id, asset_id)
        assert moved is not None and moved.status is ItemStatus.ACTIVE
        merged = await store.get_by_id(tenant, target.id)
        assert merged is not None and [a.id for a in merged.assets] == [asset_id]

    async def test_merge_moves_consents(self, store: ProfileStore, tenant: UUID) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        source.consents = [Consent(consent_type="marketing", granted=True, granted_at=ts())]
        target.consents = [Consent(consent_type="analytics", granted=False)]
        await store.save(source)
        await store.save(target)
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await store.get_by_id(tenant, target.id)
        assert merged is not None
        assert sorted(c.consent_type for c in merged.consents) == ["analytics", "marketing"]

    async def test_merge_keeps_lineage_intact(self, store: ProfileStore, tenant: UUID) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        doc = await store.add_asset(tenant, source.id, make_asset("payslip"))
        income = await store.update_field(
            tenant,
            source.id,
            make_field("income", 1, source_item_id=doc, source_item_type=SourceType.PROFILE_ASSET),
        )
        await store.merge_profiles(tenant, source.id, target.id)
        chain = await store.get_derivation_chain(tenant, income, "profile_field")
        assert [e["id"] for e in chain] == [doc, income]
        derived = await store.get_derived_items(tenant, doc)
        assert [f.id for f in derived["fields"]] == [income]
        assert await store.check_has_dependents(tenant, doc) is True

    async def test_merge_conflict_verified_wins_over_more_recent(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        verified = await store.update_field(
            tenant,
            source.id,
            make_field("email", "old@x.org", verified=True, collected_at=ts(-999)),
        )
        recent = await store.update_field(
            tenant, target.id, make_field("email", "new@x.org", collected_at=ts(-1))
        )
        await store.merge_profiles(tenant, source.id, target.id)
        await self._assert_winner(store, tenant, target.id, verified, recent)

    async def test_merge_conflict_target_verified_wins(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        recent = await store.update_field(
            tenant, source.id, make_field("email", "new@x.org", collected_at=ts(-1))
        )
        verified = await store.update_field(
            tenant,
            target.id,
            make_field("email", "old@x.org", verified=True, collected_at=ts(-999)),
        )
        await store.merge_profiles(tenant, source.id, target.id)
        await self._assert_winner(store, tenant, target.id, verified, recent)

    async def test_merge_conflict_most_recent_wins_when_neither_is_verified(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        recent = await store.update_field(
            tenant, source.id, make_field("phone", "+2", collected_at=ts(-5))
        )
        older = await store.update_field(
            tenant, target.id, make_field("phone", "+1", collected_at=ts(-500))
        )
        await store.merge_profiles(tenant, source.id, target.id)
        await self._assert_winner(store, tenant, target.id, recent, older)

    async def test_merge_conflict_most_recent_target_wins(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        older = await store.update_field(
            tenant, source.id, make_field("phone", "+1", collected_at=ts(-500))
        )
        recent = await store.update_field(
            tenant, target.id, make_field("phone", "+2", collected_at=ts(-5))
        )
        await store.merge_profiles(tenant, source.id, target.id)
        await self._assert_winner(store, tenant, target.id, recent, older)

    async def test_merge_conflict_full_tie_keeps_the_target_version(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        moment = ts(-30)
        theirs = await store.update_field(
            tenant, source.id, make_field("phone", "+1", collected_at=moment)
        )
        mine = await store.update_field(
            tenant, target.id, make_field("phone", "+2", collected_at=moment)
        )
        await store.merge_profiles(tenant, source.id, target.id)
        await self._assert_winner(store, tenant, target.id, mine, theirs)

    async def test_merge_only_compares_active_versions(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        # the source's verified version is already superseded: it must not win
        await store.update_field(tenant, source.id, make_field("email", "v@x.org", verified=True))
        await store.update_field(
            tenant, source.id, make_field("email", "old@x.org", collected_at=ts(-900))
        )
        mine = await store.update_field(
            tenant, target.id, make_field("email", "new@x.org", collected_at=ts(-1))
        )
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await store.get_by_id(tenant, target.id, include_history=True)
        assert merged is not None
        assert merged.fields["email"].id == mine
        assert len(merged.field_history["email"]) == 3
        assert [v.status for v in merged.field_history["email"]].count(ItemStatus.ACTIVE) == 1

    async def _assert_winner(
        self, store: ProfileStore, tenant: UUID, target: UUID, winner: UUID, loser: UUID
    ) -> None:
        merged = await store.get_by_id(tenant, target, include_history=True)
        assert merged is not None
        (name,) = {v.name for versions in merged.field_history.values() for v in versions}
        assert merged.fields[name].id == winner
        versions = {v.id: v for v in merged.field_history[name]}
        assert versions[loser].status is ItemStatus.SUPERSEDED
        assert versions[loser].superseded_by_id == winner
        assert versions[loser].superseded_at is not None
        assert [v.status for v in versions.values()].count(ItemStatus.ACTIVE) == 1

    async def test_merge_leaves_one_active_version_per_name(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        for name in ("a_name", "b_name", "c_name"):
            await store.update_field(tenant, source.id, make_field(name, "s"))
            await store.update_field(tenant, target.id, make_field(name, "t"))
        await store.update_field(tenant, source.id, make_field("only_source", 1))
        await store.merge_profiles(tenant, source.id, target.id)
        counts = await store.count_items_by_status(tenant)
        assert counts["fields"]["active"] == 4 and counts["fields"]["superseded"] == 3
        merged = await store.get_by_id(tenant, target.id)
        assert merged is not None and set(merged.fields) == {
            "a_name",
            "b_name",
            "c_name",
            "only_source",
        }

    async def test_merge_with_an_unknown_source_is_not_found(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        target = await new_profile(store, tenant)
        await store.update_field(tenant, target.id, make_field())
        before = await snapshot(store, tenant, profiles=(target.id,))
        with pytest.raises(errors.NotFoundError):
            await store.merge_profiles(tenant, uuid4(), target.id)
        assert await snapshot(store, tenant, profiles=(target.id,)) == before

    async def test_merge_into_an_unknown_target_is_not_found(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        await store.update_field(tenant, source.id, make_field())
        before = await snapshot(store, tenant, profiles=(source.id,))
        with pytest.raises(errors.NotFoundError):
            await store.merge_profiles(tenant, source.id, uuid4())
        assert await snapshot(store, tenant, profiles=(source.id,)) == before

    async def test_merge_with_a_deleted_profile_is_not_found(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        deleted = await new_profile(store, tenant)
        live = await new_profile(store, tenant)
        await store.delete(tenant, deleted.id)
        before = await snapshot(store, tenant, profiles=(deleted.id, live.id))
        with pytest.raises(errors.NotFoundError):
            await store.merge_profiles(tenant, deleted.id, live.id)
        with pytest.raises(errors.NotFoundError):
            await store.merge_profiles(tenant, live.id, deleted.id)
        assert await snapshot(store, tenant, profiles=(deleted.id, live.id)) == before

    async def test_merge_into_itself_is_a_validation_error(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        before = await snapshot(store, tenant, profiles=(profile.id,))
        with pytest.raises(errors.ValidationError):
            await store.merge_profiles(tenant, profile.id, profile.id)
        assert await snapshot(store, tenant, profiles=(profile.id,)) == before

    async def test_writes_after_merge_go_to_the_target(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        await store.merge_profiles(tenant, source.id, target.id)
        identity = source.channel_identities[0]
        again = await store.get_or_create(tenant, identity.channel, identity.channel_user_id)
        assert again.id == target.id
        with pytest.raises(errors.NotFoundError):
            await store.update_field(tenant, source.id, make_field())
