"""Profiles: get_or_create, the three reads, save, soft delete, history in the aggregate."""

from __future__ import annotations

from ipaddress import ip_address
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    VerificationLevel,
)
from ccvault.store import ForwardingProfileStore, ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    make_asset,
    make_field,
    new_profile,
    snapshot,
    ts,
    unique_user,
)

__all__ = ["ProfilesContract"]


class ProfilesContract(ContractBase):
    # ---------------------------------------------------------------- get_or_create

    async def test_get_or_create_creates_profile_with_primary_identity(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        user = unique_user()
        profile = await store.get_or_create(tenant, Channel.WHATSAPP, user)
        assert profile.tenant_id == tenant
        assert [(i.channel, i.channel_user_id, i.primary) for i in profile.channel_identities] == [
            (Channel.WHATSAPP, user, True)
        ]
        assert profile.fields == {} and profile.assets == []

    async def test_get_or_create_returns_the_existing_owner(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        user = unique_user()
        first = await store.get_or_create(tenant, Channel.SMS, user)
        await store.update_field(tenant, first.id, make_field("first_name", "Ada"))
        again = await store.get_or_create(tenant, Channel.SMS, user)
        assert again.id == first.id
        assert again.customer_id == first.customer_id
        assert again.fields["first_name"].value == "Ada"

    async def test_same_user_id_on_two_channels_is_two_profiles(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        user = unique_user()
        sms = await store.get_or_create(tenant, Channel.SMS, user)
        voice = await store.get_or_create(tenant, Channel.VOICE, user)
        assert sms.id != voice.id

    async def test_setup_again_is_harmless(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("city", "Bergen"))
        await store.setup()
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None and found.fields["city"].value == "Bergen"
        await store.update_field(tenant, profile.id, make_field("city", "Oslo"))
        assert len(await store.get_field_history(tenant, profile.id, "city")) == 2

    # ---------------------------------------------------------------- the three reads

    async def test_get_by_id_finds_the_profile(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None and found.id == profile.id
        assert found.customer_id == profile.customer_id

    async def test_get_by_customer_id_finds_the_profile(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        found = await store.get_by_customer_id(tenant, profile.customer_id)
        assert found is not None and found.id == profile.id

    async def test_get_by_channel_identity_finds_the_profile(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        user = unique_user()
        profile = await store.get_or_create(tenant, Channel.TELEGRAM, user)
        found = await store.get_by_channel_identity(tenant, Channel.TELEGRAM, user)
        assert found is not None and found.id == profile.id

    async def test_ids_given_as_strings_are_accepted(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        found = await store.get_by_id(str(tenant), str(profile.id))  # type: ignore[arg-type]
        assert found is not None and found.id == profile.id

    async def test_get_by_id_unknown_is_none(self, store: ProfileStore, tenant: UUID) -> None:
        await new_profile(store, tenant)
        assert await store.get_by_id(tenant, uuid4()) is None

    async def test_get_by_customer_id_unknown_is_none(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        await new_profile(store, tenant)
        assert await store.get_by_customer_id(tenant, uuid4()) is None

    async def test_get_by_channel_identity_unknown_is_none(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        await new_profile(store, tenant)
        assert await store.get_by_channel_identity(tenant, Channel.WHATSAPP, unique_user()) is None

    async def test_returned_profile_is_a_private_copy(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("city", "Paris"))
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        found.fields["city"].value = "Tampered"
        found.channel_identities.clear()
        again = await store.get_by_id(tenant, profile.id)
        assert again is not None
        assert again.fields["city"].value == "Paris"
        assert len(again.channel_identities) == 1

    async def test_timestamps_are_timezone_aware_utc(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field())
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        for moment in (found.created_at, found.updated_at, found.fields["email"].collected_at):
            offset = moment.utcoffset()
            assert offset is not None and offset.total_seconds() == 0

    # ---------------------------------------------------------------- history in the aggregate

    async def test_without_history_only_active_items_and_no_history(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("email", "old@example.com"))
        new_id = await store.update_field(tenant, profile.id, make_field("email", "new@x.org"))
        await store.update_field(tenant, profile.id, make_field("city", "Oslo"))
        await store.add_asset(tenant, profile.id, make_asset("passport"))
        await store.add_asset(tenant, profile.id, make_asset("passport"), supersede_existing=True)
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        assert set(found.fields) == {"email", "city"}
        assert found.fields["email"].id == new_id
        assert all(f.status is ItemStatus.ACTIVE for f in found.fields.values())
        assert [a.status for a in found.assets] == [ItemStatus.ACTIVE]
        assert found.field_history == {} and found.asset_history == []

    async def test_with_history_holds_every_version_newest_first(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        ids = []
        for age in (300, 200, 100):
            ids.append(
                await store.update_field(
                    tenant, profile.id, make_field("email", f"v{age}@x.org", collected_at=ts(-age))
                )
            )
        for read in (
            store.get_by_id(tenant, profile.id, include_history=True),
            store.get_by_customer_id(tenant, profile.customer_id, include_history=True),
            store.get_by_channel_identity(
                tenant,
                profile.channel_identities[0].channel,
                profile.channel_identities[0].channel_user_id,
                include_history=True,
            ),
        ):
            found = await read
            assert found is not None
            assert [v.id for v in found.field_history["email"]] == list(reversed(ids))
            assert [v.status for v in found.field_history["email"]] == [
                ItemStatus.ACTIVE,
                ItemStatus.SUPERSEDED,
                ItemStatus.SUPERSEDED,
            ]

    async def test_history_orders_by_collected_at_not_write_order(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        late = await store.update_field(
            tenant, profile.id, make_field("phone", "+1", collected_at=ts(-10))
        )
        early = await store.update_field(
            tenant, profile.id, make_field("phone", "+2", collected_at=ts(-1000))
        )
        found = await store.get_by_id(tenant, profile.id, include_history=True)
        assert found is not None
        assert [v.id for v in found.field_history["phone"]] == [late, early]

    async def test_history_ties_are_broken_by_write_order(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        moment = ts(-60)
        ids = [
            await store.update_field(
                tenant, profile.id, make_field("nickname", f"n{i}", collected_at=moment)
            )
            for i in range(4)
        ]
        found = await store.get_by_id(tenant, profile.id, include_history=True)
        assert found is not None
        assert [v.id for v in found.field_history["nickname"]] == list(reversed(ids))

    async def test_asset_history_on_request_holds_every_asset(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        first = await store.add_asset(tenant, profile.id, make_asset("contract"))
        second = await store.add_asset(
            tenant, profile.id, make_asset("contract"), supersede_existing=True
        )
        found = await store.get_by_id(tenant, profile.id, include_history=True)
        assert found is not None
        assert {a.id for a in found.asset_history} == {first, second}
        assert [a.id for a in found.assets] == [second]

    # ---------------------------------------------------------------- save

    async def test_save_creates_a_new_profile(self, store: ProfileStore, tenant: UUID) -> None:
        user = unique_user()
        profile = CustomerProfile(
            tenant_id=tenant,
            channel_identities=[ChannelIdentity(channel=Channel.EMAIL, channel_user_id=user)],
            verification_level=VerificationLevel.EMAIL_VERIFIED,
            created_at=ts(),
            updated_at=ts(),
        )
        saved_id = await store.save(profile)
        assert saved_id == profile.id
        found = await store.get_by_channel_identity(tenant, Channel.EMAIL, user)
        assert found is not None and found.id == profile.id
        assert found.customer_id == profile.customer_id
        assert found.verification_level is VerificationLevel.EMAIL_VERIFIED

    async def test_save_updates_profile_attributes_and_consents(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        profile.verification_level = VerificationLevel.KYC_COMPLETE
        profile.last_interaction_at = ts(-5)
        profile.consents = [
            Consent(
                consent_type="marketing", granted=True, granted_at=ts(-5), ip_address="10.0.0.1"
            )
        ]
        assert await store.save(profile) == profile.id
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        assert found.verification_level is VerificationLevel.KYC_COMPLETE
        assert found.last_interaction_at == profile.last_interaction_at
        assert [(c.consent_type, c.granted, str(c.ip_address)) for c in found.consents] == [
            ("marketing", True, "10.0.0.1")
        ]

    async def test_the_provider_stores_a_sealed_consent_ip_as_given(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        """``Consent.ip_address_sealed`` (the encryption wrapper's sealed form of the IP)
        is stored and returned as an opaque string by the provider itself, also when a
        merge moves the consent; checked below any wrapper (the encryption wrapper refuses
        a caller's value: a remote store whose server encrypts refuses it too, and then
        must have written nothing)."""
        provider = store
        while isinstance(provider, ForwardingProfileStore):
            provider = provider.inner
        sealed = "ccvault:pii:v1:contract:" + "A" * 64
        source = await new_profile(provider, tenant)
        source.consents = [
            Consent(consent_type="marketing", granted=True, ip_address_sealed=sealed),
            Consent(consent_type="calls", granted=False, ip_address="192.0.2.8"),
        ]
        try:
            await provider.save(source)
        except errors.ValidationError:  # an encrypting vault behind a remote client
            unchanged = await provider.get_by_id(tenant, source.id)
            assert unchanged is not None and unchanged.consents == []
            return
        found = await provider.get_by_id(tenant, source.id)
        assert found is not None
        assert [(c.ip_address, c.ip_address_sealed) for c in found.consents] == [
            (None, sealed),
            (ip_address("192.0.2.8"), None),
        ]
        target = await new_profile(provider, tenant)
        assert await provider.merge_profiles(tenant, source.id, target.id)
        merged = await provider.get_by_id(tenant, target.id)
        assert merged is not None
        assert [c.ip_address_sealed for c in merged.consents] == [sealed, None]

    async def test_save_writes_new_fields_and_assets(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        old_id = await store.update_field(tenant, profile.id, make_field("city", "Rome"))
        current = await store.get_by_id(tenant, profile.id)
        assert current is not None
        new_city = make_field("city", "Milan")
        current.fields["city"] = new_city
        current.assets.append(make_asset("selfie"))
        await store.save(current)
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        assert found.fields["city"].id == new_city.id and found.fields["city"].value == "Milan"
        assert [a.name for a in found.assets] == ["selfie"]
        old = await store.get_field(tenant, profile.id, "city", status=ItemStatus.SUPERSEDED)
        assert old is not None and old.id == old_id and old.superseded_by_id == new_city.id

    async def test_save_identity_owned_by_another_profile_is_a_conflict(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        owner = await new_profile(store, tenant)
        other = await new_profile(store, tenant)
        before = await snapshot(store, tenant, profiles=(owner.id, other.id))
        claimed = owner.channel_identities[0].model_copy(update={"primary": False})
        other.channel_identities.append(claimed)
        other.verification_level = VerificationLevel.KYC_COMPLETE
        with pytest.raises(errors.IdentityConflictError):
            await store.save(other)
        assert await snapshot(store, tenant, profiles=(owner.id, other.id)) == before

    async def test_save_customer_id_owned_by_another_profile_is_a_conflict(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        owner = await new_profile(store, tenant)
        intruder = CustomerProfile(tenant_id=tenant, customer_id=owner.customer_id)
        before = await snapshot(store, tenant, profiles=(owner.id, intruder.id))
        with pytest.raises(errors.IdentityConflictError):
            await store.save(intruder)
        assert await snapshot(store, tenant, profiles=(owner.id, intruder.id)) == before
        assert await store.get_by_id(tenant, intruder.id) is None

    async def test_save_releases_identities_no_longer_listed(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        released = profile.channel_identities[0]
        kept = ChannelIdentity(channel=Channel.EMAIL, channel_user_id=f"{uuid4()}@x.org")
        profile.channel_identities = [kept]
        await store.save(profile)
        assert (
            await store.get_by_channel_identity(tenant, released.channel, released.channel_user_id)
            is None
        )
        fresh = await store.get_or_create(tenant, released.channel, released.channel_user_id)
        assert fresh.id != profile.id
        owner = await store.get_by_channel_identity(tenant, kept.channel, kept.channel_user_id)
        assert owner is not None and owner.id == profile.id

    async def test_save_updates_an_existing_field_version_in_place(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        field_id = await store.update_field(
            tenant, profile.id, make_field("city", "Rome", confidence=0.4)
        )
        current = await store.get_by_id(tenant, profile.id)
        assert current is not None
        current.fields["city"] = current.fields["city"].model_copy(
            update={"confidence": 0.9, "verified": True}
        )
        await store.save(current)
        history = await store.get_field_history(tenant, profile.id, "city")
        assert [(v.id, v.confidence, v.verified, v.status) for v in history] == [
            (field_id, 0.9, True, ItemStatus.ACTIVE)
        ]

    async def test_save_creates_a_profile_with_fields_and_assets_in_one_step(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        email = make_field("email", "ada@example.com")
        asset = make_asset("avatar")
        identity = ChannelIdentity(
            channel=Channel.WEB,
            channel_user_id=unique_user("cookie-"),
            verified=True,
            verified_at=ts(-10),
            primary=True,
            created_at=ts(-20),
        )
        profile = CustomerProfile(
            tenant_id=tenant,
            channel_identities=[identity],
            fields={"email": email},
            assets=[asset],
            created_at=ts(),
            updated_at=ts(),
        )
        await store.save(profile)
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        assert found.fields["email"].id == email.id
        assert found.fields["email"].status is ItemStatus.ACTIVE
        assert [a.id for a in found.assets] == [asset.id]
        assert found.channel_identities == [identity]

    async def test_save_never_deletes_fields_or_assets(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.update_field(tenant, profile.id, make_field("city", "Rome"))
        await store.add_asset(tenant, profile.id, make_asset("selfie"))
        current = await store.get_by_id(tenant, profile.id)
        assert current is not None
        current.fields = {}
        current.assets = []
        await store.save(current)
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        assert set(found.fields) == {"city"} and len(found.assets) == 1

    async def test_concurrent_saves_claiming_one_identity_admit_one(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        import asyncio

        identity = ChannelIdentity(channel=Channel.SMS, channel_user_id=unique_user())
        candidates = [
            CustomerProfile(tenant_id=tenant, channel_identities=[identity.model_copy()])
            for _ in range(10)
        ]
        results = await asyncio.gather(*(store.save(c) for c in candidates), return_exceptions=True)
        saved = [r for r in results if isinstance(r, UUID)]
        assert len(saved) == 1, results
        assert all(isinstance(r, errors.IdentityConflictError) for r in results if r not in saved)
        owner = await store.get_by_channel_identity(tenant, Channel.SMS, identity.channel_user_id)
        assert owner is not None and owner.id == saved[0]
        for candidate in candidates:
            if candidate.id != saved[0]:
                assert await store.get_by_id(tenant, candidate.id) is None

    # ---------------------------------------------------------------- delete

    async def test_delete_is_true_once_then_false(self, store: ProfileStore, tenant: UUID) -> None:
        profile = await new_profile(store, tenant)
        assert await store.delete(tenant, profile.id) is True
        assert await store.delete(tenant, profile.id) is False

    async def test_delete_unknown_is_false(self, store: ProfileStore, tenant: UUID) -> None:
        assert await store.delete(tenant, uuid4()) is False

    async def test_soft_deleted_profile_is_invisible_to_every_read(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        identity = profile.channel_identities[0]
        await store.delete(tenant, profile.id)
        assert await store.get_by_id(tenant, profile.id) is None
        assert await store.get_by_customer_id(tenant, profile.customer_id) is None
        assert (
            await store.get_by_channel_identity(tenant, identity.channel, identity.channel_user_id)
            is None
        )

    async def test_delete_releases_identities_for_a_fresh_start(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        identity = profile.channel_identities[0]
        await store.delete(tenant, profile.id)
        fresh = await store.get_or_create(tenant, identity.channel, identity.channel_user_id)
        assert fresh.id != profile.id
        assert fresh.fields == {}

    async def test_writes_to_a_soft_deleted_profile_are_not_found(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        await store.delete(tenant, profile.id)
        with pytest.raises(errors.NotFoundError):
            await store.update_field(tenant, profile.id, make_field())
        with pytest.raises(errors.NotFoundError):
            await store.add_asset(tenant, profile.id, make_asset())
        with pytest.raises(errors.NotFoundError):
            await store.link_channel(
                tenant, profile.id, ChannelIdentity(channel=Channel.WEB, channel_user_id="w-1")
            )
