"""Integrity rules at the edges of the write paths: what a stale caller, an expired value or
an id reused across tenants must never be able to do."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import Channel, ChannelIdentity, ItemStatus
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    make_definition,
    make_field,
    new_profile,
    snapshot,
    ts,
    unique_user,
)

__all__ = ["IntegrityContract"]


class IntegrityContract(ContractBase):
    # ------------------------------------------------------------- save of a dead profile

    async def test_save_of_a_soft_deleted_profile_is_not_found(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.delete(tenant, profile.id)
        before = await snapshot(store, tenant, profiles=(profile.id,))
        with pytest.raises(errors.NotFoundError):
            await store.save(profile)
        assert await store.get_by_id(tenant, profile.id) is None
        assert await snapshot(store, tenant, profiles=(profile.id,)) == before

    async def test_save_of_a_merged_away_profile_is_not_found(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        await store.merge_profiles(tenant, source.id, target.id)
        with pytest.raises(errors.NotFoundError):
            await store.save(source)
        assert await store.get_by_id(tenant, source.id) is None
        owner = await store.get_by_channel_identity(
            tenant,
            source.channel_identities[0].channel,
            source.channel_identities[0].channel_user_id,
        )
        assert owner is not None and owner.id == target.id

    # ------------------------------------------------------------- save keeps names

    async def test_save_cannot_rename_a_stored_field_version(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("email", "a@x.org"))
        await store.update_field(tenant, profile.id, make_field("phone", "+4915100"))
        loaded = await store.get_by_id(tenant, profile.id)
        assert loaded is not None
        before = await snapshot(store, tenant, profiles=(profile.id,))
        renamed = loaded.fields["email"].model_copy(update={"name": "phone"})
        loaded.fields = {"phone": renamed}
        with pytest.raises(errors.ConflictError):
            await store.save(loaded)
        assert await snapshot(store, tenant, profiles=(profile.id,)) == before

    async def test_save_refuses_two_primary_identities(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        profile.channel_identities.append(
            ChannelIdentity(channel=Channel.EMAIL, channel_user_id=unique_user("e-"), primary=True)
        )
        before = await snapshot(store, tenant, profiles=(profile.id,))
        with pytest.raises(errors.ValidationError):
            await store.save(profile)
        assert await snapshot(store, tenant, profiles=(profile.id,)) == before

    async def test_link_channel_never_adds_a_second_primary(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        extra = ChannelIdentity(channel=Channel.SMS, channel_user_id=unique_user(), primary=True)
        assert await store.link_channel(tenant, profile.id, extra) is True
        loaded = await store.get_by_id(tenant, profile.id)
        assert loaded is not None
        primaries = [i for i in loaded.channel_identities if i.primary]
        assert [(i.channel, i.channel_user_id) for i in primaries] == [
            (
                profile.channel_identities[0].channel,
                profile.channel_identities[0].channel_user_id,
            )
        ]

    # ------------------------------------------------------------- expired values

    async def test_an_expired_version_does_not_block_a_non_superseding_write(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        old = await store.update_field(
            tenant, profile.id, make_field("otp", "1111", expires_at=ts(-60))
        )
        assert await store.get_field(tenant, profile.id, "otp") is None
        new = await store.update_field(
            tenant, profile.id, make_field("otp", "2222"), supersede_existing=False
        )
        history = {v.id: v for v in await store.get_field_history(tenant, profile.id, "otp")}
        assert history[new].status is ItemStatus.ACTIVE
        assert history[old].status is ItemStatus.EXPIRED
        assert history[old].superseded_by_id is None
        current = await store.get_field(tenant, profile.id, "otp")
        assert current is not None and current.id == new

    async def test_an_unexpired_version_still_blocks_a_non_superseding_write(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("otp", "1111", expires_at=ts(600)))
        with pytest.raises(errors.ActiveFieldConflictError):
            await store.update_field(
                tenant, profile.id, make_field("otp", "2222"), supersede_existing=False
            )

    @pytest.mark.parametrize("expired_side", ["source", "target"])
    async def test_merge_never_lets_an_expired_version_push_out_a_valid_one(
        self, store: ProfileStore, tenant: UUID, expired_side: str
    ) -> None:
        source = await new_profile(store, tenant)
        target = await new_profile(store, tenant)
        # the expired version is verified and more recent: it would win on every other rule
        expired_on, valid_on = (source, target) if expired_side == "source" else (target, source)
        await store.update_field(
            tenant,
            expired_on.id,
            make_field(
                "email", "gone@x.org", verified=True, collected_at=ts(-1), expires_at=ts(-0.5)
            ),
        )
        valid = await store.update_field(
            tenant, valid_on.id, make_field("email", "here@x.org", collected_at=ts(-100))
        )
        await store.merge_profiles(tenant, source.id, target.id)
        merged = await store.get_by_id(tenant, target.id)
        assert merged is not None
        assert merged.fields["email"].id == valid
        assert merged.fields["email"].value == "here@x.org"

    # ------------------------------------------------------------- ids across tenants

    async def test_one_field_id_may_be_used_by_two_tenants(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        other = uuid4()
        mine = await new_profile(store, tenant)
        theirs = await new_profile(store, other)
        shared = uuid4()
        await store.update_field(tenant, mine.id, make_field("email", "me@x.org", id=shared))
        await store.update_field(other, theirs.id, make_field("email", "them@x.org", id=shared))
        got_mine = await store.get_field(tenant, mine.id, "email")
        got_theirs = await store.get_field(other, theirs.id, "email")
        assert got_mine is not None and got_mine.value == "me@x.org"
        assert got_theirs is not None and got_theirs.value == "them@x.org"
        assert got_mine.id == got_theirs.id == shared

    async def test_one_profile_id_may_be_used_by_two_tenants(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        other = uuid4()
        mine = await new_profile(store, tenant)
        clash = mine.model_copy(update={"tenant_id": other, "channel_identities": []})
        assert await store.save(clash) == mine.id
        loaded_mine = await store.get_by_id(tenant, mine.id)
        loaded_theirs = await store.get_by_id(other, mine.id)
        assert loaded_mine is not None and loaded_mine.tenant_id == tenant
        assert loaded_theirs is not None and loaded_theirs.tenant_id == other
        assert loaded_mine.channel_identities and not loaded_theirs.channel_identities

    async def test_one_definition_id_may_be_used_by_two_tenants(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        other, agent = uuid4(), uuid4()
        shared = uuid4()
        await store.save_field_definition(make_definition(tenant, agent, "email", id=shared))
        await store.save_field_definition(
            make_definition(other, agent, "email", id=shared, display_name="Theirs")
        )
        mine = await store.get_field_definition(tenant, agent, "email")
        theirs = await store.get_field_definition(other, agent, "email")
        assert mine is not None and theirs is not None
        assert mine.display_name != "Theirs" and theirs.display_name == "Theirs"
