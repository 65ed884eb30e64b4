"""All or nothing, and stale saves.

* **Every refused write leaves the store exactly as before.** Each case below builds a tenant
  (several profiles with fields, history, assets, lineage, identities, consents,
  definitions and requirements), takes a full snapshot of everything the public API shows
  about the tenant, makes one write that the contract refuses, and compares the snapshot
  afterwards. A provider that writes part of a call before finding the conflict (consents
  and identities first, then a refused field) fails here.
* **Save never changes a stored status it did not read as current** (``ProfileStore.save``):
  a profile read before a concurrent supersede, orphan marking or expiry sweep and saved
  back afterwards leaves those statuses as stored, and the rest of the save goes ahead.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    CustomerProfile,
    ItemStatus,
    ItemType,
    ProfileAsset,
    ProfileField,
    SourceType,
    VerificationLevel,
)
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import (
    assert_unbroken_chain,
    make_asset,
    make_definition,
    make_field,
    make_requirement,
    new_profile,
    ts,
    unique_user,
)

__all__ = ["AtomicityContract", "tenant_snapshot"]


async def tenant_snapshot(
    store: ProfileStore,
    tenant_id: UUID,
    *,
    agents: tuple[UUID, ...] = (),
    scenarios: tuple[UUID, ...] = (),
) -> str:
    """Everything the public API shows about a tenant, as one JSON string.

    Every profile of the tenant (live or soft-deleted, from ``list_profile_ids``): its
    export (history included) and, when live, ``get_by_id(include_history=True)``; the
    owner of every identity ever listed; the item counts by status; the given agents'
    definitions and the given scenarios' requirements (scenario-wide and per step).
    """
    state: dict[str, Any] = {
        "counts": await store.count_items_by_status(tenant_id),
        "listed": tenant_id in await store.list_tenant_ids(),
    }
    profiles: dict[str, Any] = {}
    identities: set[tuple[Channel, str]] = set()
    for profile_id in await store.list_profile_ids(tenant_id):
        try:
            document = await store.export_profile(tenant_id, profile_id)
        except LookupError:
            profiles[str(profile_id)] = None
            continue
        document.pop("exported_at", None)
        live = await store.get_by_id(tenant_id, profile_id, include_history=True)
        profiles[str(profile_id)] = {
            "export": document,
            "live": None if live is None else live.model_dump(mode="json"),
        }
        if live is not None:
            identities.update((i.channel, i.channel_user_id) for i in live.channel_identities)
    state["profiles"] = profiles
    owners: dict[str, str | None] = {}
    for channel, user in sorted(identities):
        owner = await store.get_by_channel_identity(tenant_id, channel, user)
        owners[f"{channel.value}:{user}"] = None if owner is None else str(owner.id)
    state["identity_owners"] = owners
    state["definitions"] = [
        [
            d.model_dump(mode="json")
            for d in await store.get_field_definitions(tenant_id, agent, enabled_only=False)
        ]
        for agent in agents
    ]
    requirements: list[Any] = []
    for scenario in scenarios:
        found = await store.get_scenario_requirements(tenant_id, scenario)
        requirements.append([r.model_dump(mode="json") for r in found])
    state["requirements"] = requirements
    return json.dumps(state, sort_keys=True, default=str)


@dataclass
class _World:
    """A small tenant with something of every kind in it."""

    tenant: UUID
    agent: UUID
    scenario: UUID
    alice: CustomerProfile  # live, with fields (one superseded), assets, consents
    bob: CustomerProfile  # live, another profile with its own items
    gone: CustomerProfile  # soft-deleted
    alice_email: ProfileField  # ACTIVE
    alice_city: ProfileField  # ACTIVE, derived from alice_email
    alice_scan: ProfileAsset  # ACTIVE
    bob_phone: ProfileField  # ACTIVE
    bob_scan: ProfileAsset  # ACTIVE


async def _world(store: ProfileStore, tenant: UUID) -> _World:
    agent, scenario = uuid4(), uuid4()
    alice = await new_profile(store, tenant)
    bob = await new_profile(store, tenant, Channel.EMAIL)
    gone = await new_profile(store, tenant, Channel.SMS)
    await store.update_field(tenant, alice.id, make_field("email", "old@example.com"))
    alice_email = make_field("email", "ada@example.com", collected_at=ts(1))
    await store.update_field(tenant, alice.id, alice_email)
    alice_city = make_field(
        "city",
        "Rome",
        source_item_id=alice_email.id,
        source_item_type=SourceType.PROFILE_FIELD,
        source_metadata={"step": "derived"},
    )
    await store.update_field(tenant, alice.id, alice_city)
    alice_scan = make_asset("id_scan")
    await store.add_asset(tenant, alice.id, alice_scan)
    # overdue but not swept: a refused write must not sweep it either
    await store.update_field(tenant, alice.id, make_field("otp", "123456", expires_at=ts(-1)))
    bob_phone = make_field("phone", "+15550100")
    await store.update_field(tenant, bob.id, bob_phone)
    bob_scan = make_asset("id_scan")
    await store.add_asset(tenant, bob.id, bob_scan)
    await store.update_field(tenant, gone.id, make_field("email", "gone@example.com"))
    assert await store.delete(tenant, gone.id)
    alice_now = await store.get_by_id(tenant, alice.id)
    assert alice_now is not None
    alice_now.consents = [Consent(consent_type="marketing", granted=True, granted_at=ts(-60))]
    alice_now.verification_level = VerificationLevel.EMAIL_VERIFIED
    await store.save(alice_now)
    await store.save_field_definition(make_definition(tenant, agent, "email", is_pii=True))
    await store.save_scenario_requirement(make_requirement(tenant, agent, scenario, "email"))
    fresh = [await store.get_by_id(tenant, p.id) for p in (alice, bob)]
    assert fresh[0] is not None and fresh[1] is not None
    return _World(
        tenant=tenant,
        agent=agent,
        scenario=scenario,
        alice=fresh[0],
        bob=fresh[1],
        gone=gone,
        alice_email=fresh[0].fields["email"],
        alice_city=fresh[0].fields["city"],
        alice_scan=alice_scan,
        bob_phone=bob_phone,
        bob_scan=bob_scan,
    )


def _everything_changed(w: _World) -> CustomerProfile:
    """Alice as a caller would save her after changing everything a save can change."""
    held = w.alice.model_copy(deep=True)
    held.verification_level = VerificationLevel.KYC_COMPLETE
    held.last_interaction_at = ts(5)
    held.consents = [Consent(consent_type="profiling", granted=False, granted_at=ts(-1))]
    held.channel_identities = [
        *held.channel_identities,
        ChannelIdentity(channel=Channel.TELEGRAM, channel_user_id=unique_user("tg")),
    ]
    held.fields["email"] = held.fields["email"].model_copy(update={"confidence": 0.1})
    held.fields["nickname"] = make_field("nickname", "Ada")
    held.fields["city"] = make_field("city", "Milan")
    held.assets = [*held.assets, make_asset("selfie")]
    return held


_Refused = Callable[[ProfileStore, _World], Awaitable[object]]


async def _save_identity_of_another(store: ProfileStore, w: _World) -> object:
    held = _everything_changed(w)
    taken = w.bob.channel_identities[0].model_copy(update={"primary": False})
    held.channel_identities.append(taken)
    return await store.save(held)


async def _save_customer_id_of_another(store: ProfileStore, w: _World) -> object:
    held = _everything_changed(w)
    held.customer_id = w.bob.customer_id
    return await store.save(held)


async def _save_field_id_of_another(store: ProfileStore, w: _World) -> object:
    held = _everything_changed(w)
    held.fields["phone"] = w.bob_phone.model_copy()
    return await store.save(held)


async def _save_asset_id_of_another(store: ProfileStore, w: _World) -> object:
    held = _everything_changed(w)
    held.assets.append(w.bob_scan.model_copy())  # last: found after everything else
    return await store.save(held)


async def _save_renamed_field(store: ProfileStore, w: _World) -> object:
    held = _everything_changed(w)
    renamed = held.fields.pop("email").model_copy(update={"name": "contact_email"})
    held.fields["contact_email"] = renamed
    return await store.save(held)


async def _save_renamed_asset(store: ProfileStore, w: _World) -> object:
    held = _everything_changed(w)
    held.assets = [
        a.model_copy(update={"name": "passport"}) if a.id == w.alice_scan.id else a
        for a in held.assets
    ]
    return await store.save(held)


async def _save_deleted_profile(store: ProfileStore, w: _World) -> object:
    held = w.gone.model_copy(deep=True)
    held.verification_level = VerificationLevel.KYC_COMPLETE
    held.fields = {"nickname": make_field("nickname", "Ghost")}
    return await store.save(held)


async def _save_new_profile_with_an_owned_identity(store: ProfileStore, w: _World) -> object:
    taken = w.alice.channel_identities[0].model_copy(update={"primary": False})
    intruder = CustomerProfile(
        tenant_id=w.tenant,
        channel_identities=[
            ChannelIdentity(channel=Channel.WEB, channel_user_id=unique_user("web"), primary=True),
            taken,
        ],
        fields={"email": make_field("email", "intruder@example.com")},
        assets=[make_asset("avatar")],
        consents=[Consent(consent_type="marketing", granted=True, granted_at=ts())],
    )
    return await store.save(intruder)


async def _save_two_primaries(store: ProfileStore, w: _World) -> object:
    held = _everything_changed(w)
    held.channel_identities = [
        i.model_copy(update={"primary": True}) for i in held.channel_identities
    ]
    return await store.save(held)


async def _update_field_with_an_active_version(store: ProfileStore, w: _World) -> object:
    return await store.update_field(
        w.tenant, w.alice.id, make_field("email", "new@example.com"), supersede_existing=False
    )


async def _update_field_with_a_stored_id(store: ProfileStore, w: _World) -> object:
    reused = make_field("email", "reused@example.com", id=w.bob_phone.id)
    return await store.update_field(w.tenant, w.alice.id, reused)


async def _update_field_of_a_deleted_profile(store: ProfileStore, w: _World) -> object:
    return await store.update_field(w.tenant, w.gone.id, make_field("email", "x@example.com"))


async def _add_asset_with_a_stored_id(store: ProfileStore, w: _World) -> object:
    reused = make_asset("id_scan", id=w.bob_scan.id)
    return await store.add_asset(w.tenant, w.alice.id, reused, supersede_existing=True)


async def _add_asset_to_a_deleted_profile(store: ProfileStore, w: _World) -> object:
    return await store.add_asset(w.tenant, w.gone.id, make_asset("id_scan"))


async def _link_an_owned_identity(store: ProfileStore, w: _World) -> object:
    taken = w.bob.channel_identities[0]
    return await store.link_channel(w.tenant, w.alice.id, taken)


async def _merge_a_deleted_source(store: ProfileStore, w: _World) -> object:
    return await store.merge_profiles(w.tenant, w.gone.id, w.alice.id)


async def _merge_into_a_deleted_target(store: ProfileStore, w: _World) -> object:
    return await store.merge_profiles(w.tenant, w.bob.id, w.gone.id)


async def _merge_an_unknown_source(store: ProfileStore, w: _World) -> object:
    return await store.merge_profiles(w.tenant, uuid4(), w.alice.id)


async def _delete_an_item_with_dependents(store: ProfileStore, w: _World) -> object:
    return await store.delete_item(w.tenant, w.alice_email.id, ItemType.PROFILE_FIELD.value)


REFUSED_WRITES: dict[str, tuple[_Refused, type[errors.VaultError]]] = {
    "save_identity_of_another_profile": (_save_identity_of_another, errors.IdentityConflictError),
    "save_customer_id_of_another_profile": (
        _save_customer_id_of_another,
        errors.IdentityConflictError,
    ),
    "save_field_id_of_another_profile": (_save_field_id_of_another, errors.ConflictError),
    "save_asset_id_of_another_profile": (_save_asset_id_of_another, errors.ConflictError),
    "save_renamed_field": (_save_renamed_field, errors.ConflictError),
    "save_renamed_asset": (_save_renamed_asset, errors.ConflictError),
    "save_deleted_profile": (_save_deleted_profile, errors.NotFoundError),
    "save_new_profile_with_an_owned_identity": (
        _save_new_profile_with_an_owned_identity,
        errors.IdentityConflictError,
    ),
    "save_two_primary_identities": (_save_two_primaries, errors.ValidationError),
    "update_field_with_an_active_version": (
        _update_field_with_an_active_version,
        errors.ActiveFieldConflictError,
    ),
    "update_field_with_a_stored_id": (_update_field_with_a_stored_id, errors.ConflictError),
    "update_field_of_a_deleted_profile": (_update_field_of_a_deleted_profile, errors.NotFoundError),
    "add_asset_with_a_stored_id": (_add_asset_with_a_stored_id, errors.ConflictError),
    "add_asset_to_a_deleted_profile": (_add_asset_to_a_deleted_profile, errors.NotFoundError),
    "link_an_identity_of_another_profile": (_link_an_owned_identity, errors.IdentityConflictError),
    "merge_a_deleted_source": (_merge_a_deleted_source, errors.NotFoundError),
    "merge_into_a_deleted_target": (_merge_into_a_deleted_target, errors.NotFoundError),
    "merge_an_unknown_source": (_merge_an_unknown_source, errors.NotFoundError),
    "delete_an_item_with_dependents": (_delete_an_item_with_dependents, errors.DependentsError),
}


class AtomicityContract(ContractBase):
    """A refused write changes nothing; a stale save changes no status it did not read."""

    # ---------------------------------------------------------------- all or nothing

    @pytest.mark.parametrize("case", sorted(REFUSED_WRITES))
    async def test_a_refused_write_leaves_the_tenant_exactly_as_before(
        self, store: ProfileStore, tenant: UUID, case: str
    ) -> None:
        world = await _world(store, tenant)
        refused, error = REFUSED_WRITES[case]
        scope = {"agents": (world.agent,), "scenarios": (world.scenario,)}
        before = await tenant_snapshot(store, tenant, **scope)
        with pytest.raises(error):
            await refused(store, world)
        assert await tenant_snapshot(store, tenant, **scope) == before, case
        # and the store still works: the same change without the conflict goes through
        assert await store.update_field(tenant, world.alice.id, make_field("zip", "00100"))

    async def test_a_refused_save_after_a_concurrent_supersede_writes_nothing(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        """A stale copy with a late conflict: nothing of the save is applied."""
        world = await _world(store, tenant)
        held = _everything_changed(world)
        await store.update_field(tenant, world.alice.id, make_field("email", "newer@example.com"))
        held.assets.append(world.bob_scan.model_copy())
        scope = {"agents": (world.agent,), "scenarios": (world.scenario,)}
        before = await tenant_snapshot(store, tenant, **scope)
        with pytest.raises(errors.ConflictError):
            await store.save(held)
        assert await tenant_snapshot(store, tenant, **scope) == before

    # ---------------------------------------------------------------- stale saves

    async def test_stale_save_keeps_an_asset_superseded_meanwhile(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        old = make_asset("id_scan")
        await store.add_asset(tenant, profile.id, old)
        held = await store.get_by_id(tenant, profile.id)
        assert held is not None and [a.id for a in held.assets] == [old.id]
        new = make_asset("id_scan")
        await store.add_asset(tenant, profile.id, new, supersede_existing=True)
        held.verification_level = VerificationLevel.DOCUMENT_VERIFIED
        await store.save(held)
        stored_old = await store.get_asset(tenant, profile.id, old.id)
        assert stored_old is not None
        assert stored_old.status is ItemStatus.SUPERSEDED
        assert stored_old.superseded_by_id == new.id
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        assert [a.id for a in found.assets] == [new.id]
        assert found.verification_level is VerificationLevel.DOCUMENT_VERIFIED

    async def test_stale_save_keeps_a_field_orphaned_meanwhile(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        derived = make_field(
            "city",
            "Rome",
            source_item_id=uuid4(),  # its source is gone
            source_item_type=SourceType.PROFILE_FIELD,
        )
        await store.update_field(tenant, profile.id, derived)
        held = await store.get_by_id(tenant, profile.id)
        assert held is not None and held.fields["city"].status is ItemStatus.ACTIVE
        assert await store.mark_orphans(tenant) == 1
        held.fields["city"] = held.fields["city"].model_copy(update={"confidence": 0.2})
        held.fields["nickname"] = make_field("nickname", "Ada")
        await store.save(held)
        stored = await store.get_field(tenant, profile.id, "city", status=None)
        assert stored is not None and stored.id == derived.id
        assert stored.status is ItemStatus.ORPHANED
        assert stored.confidence == derived.confidence  # left exactly as stored
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        assert "city" not in found.fields and found.fields["nickname"].value == "Ada"
        assert await store.mark_orphans(tenant) == 0

    async def test_stale_save_keeps_a_field_expired_by_a_sweep(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        held = await store.get_by_id(tenant, profile.id)
        assert held is not None
        # the caller wrote it and still holds it as it was: ACTIVE, about to expire
        due = make_field("otp", "123456", collected_at=ts(-60), expires_at=ts(-1))
        await store.update_field(tenant, profile.id, due)
        held.fields["otp"] = due
        assert await store.expire_stale_fields(tenant, profile.id) == 1
        await store.save(held)
        stored = await store.get_field(tenant, profile.id, "otp", status=None)
        assert stored is not None and stored.id == due.id
        assert stored.status is ItemStatus.EXPIRED
        assert await store.expire_stale_fields(tenant, profile.id) == 0
        counts = await store.count_items_by_status(tenant)
        assert counts["fields"]["active"] == 0 and counts["fields"]["expired"] == 1

    async def test_stale_save_of_a_field_with_a_newer_version_applies_the_rest(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        """No conflict, no revival, no retry storm: the newer version stays ACTIVE, the
        held old one stays as stored, and everything else the caller changed is saved."""
        profile = await new_profile(store, tenant)
        first = make_field("email", "first@example.com", confidence=0.5)
        await store.update_field(tenant, profile.id, first)
        held = await store.get_by_id(tenant, profile.id)
        assert held is not None
        newer = make_field("email", "newer@example.com", collected_at=ts(1))
        await store.update_field(tenant, profile.id, newer)
        held.fields["email"] = held.fields["email"].model_copy(update={"confidence": 0.9})
        held.fields["nickname"] = make_field("nickname", "Ada")
        held.verification_level = VerificationLevel.PHONE_VERIFIED
        held.consents = [Consent(consent_type="marketing", granted=True, granted_at=ts(-1))]
        extra = ChannelIdentity(channel=Channel.SLACK, channel_user_id=unique_user("U"))
        held.channel_identities.append(extra)
        assert await store.save(held) == profile.id
        history = await store.get_field_history(tenant, profile.id, "email")
        assert [(v.id, v.status) for v in history] == [
            (newer.id, ItemStatus.ACTIVE),
            (first.id, ItemStatus.SUPERSEDED),
        ]
        assert history[1].superseded_by_id == newer.id and history[1].confidence == 0.5
        assert_unbroken_chain(history)
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        assert found.fields["email"].id == newer.id
        assert found.fields["nickname"].value == "Ada"
        assert found.verification_level is VerificationLevel.PHONE_VERIFIED
        assert [c.consent_type for c in found.consents] == ["marketing"]
        owner = await store.get_by_channel_identity(tenant, extra.channel, extra.channel_user_id)
        assert owner is not None and owner.id == profile.id

    async def test_stale_saves_racing_writers_revive_nothing_and_never_conflict(
        self, store: ProfileStore, other_store: ProfileStore, tenant: UUID
    ) -> None:
        """Stale copies saved while other writers (on another instance where there is one)
        supersede the field and the asset and sweep: whatever the interleaving, every save
        succeeds, one version of the field and one asset of the name stay ACTIVE, the
        supersede chain is unbroken, and every new field the saves carried is stored."""
        import asyncio

        profile = await new_profile(store, tenant)
        first = make_field("email", "v0@example.com")
        await store.update_field(tenant, profile.id, first)
        scan = make_asset("id_scan")
        await store.add_asset(tenant, profile.id, scan)
        held = await store.get_by_id(tenant, profile.id)
        assert held is not None
        calls: list[Any] = []
        for n in range(8):
            copy = held.model_copy(deep=True)
            copy.fields["email"] = copy.fields["email"].model_copy(update={"confidence": 0.1})
            copy.fields[f"nick_{n}"] = make_field(f"nick_{n}", f"N{n}")
            target = store if n % 2 else other_store
            calls.append(target.save(copy))
            writer = other_store if n % 2 else store
            calls.append(
                writer.update_field(tenant, profile.id, make_field("email", f"v{n + 1}@x.org"))
            )
            if n % 2:
                calls.append(
                    writer.add_asset(
                        tenant, profile.id, make_asset("id_scan"), supersede_existing=True
                    )
                )
            else:
                calls.append(writer.expire_stale_fields(tenant, profile.id))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        history = await store.get_field_history(tenant, profile.id, "email")
        assert len(history) == 9
        assert_unbroken_chain(history)
        assert next(v for v in history if v.id == first.id).status is ItemStatus.SUPERSEDED
        found = await store.get_by_id(tenant, profile.id, include_history=True)
        assert found is not None
        assert {f"nick_{n}" for n in range(8)} <= set(found.fields)
        scans = [a for a in found.asset_history if a.name == "id_scan"]
        assert len(scans) == 5
        assert [a.status for a in scans].count(ItemStatus.ACTIVE) == 1
        assert next(a for a in scans if a.id == scan.id).status is ItemStatus.SUPERSEDED

    async def test_save_ignores_the_callers_copy_of_a_stored_status(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        """Statuses change through the writes that own them, never through save."""
        profile = await new_profile(store, tenant)
        asset = make_asset("id_scan")
        await store.add_asset(tenant, profile.id, asset)
        held = await store.get_by_id(tenant, profile.id)
        assert held is not None
        held.assets = [
            held.assets[0].model_copy(
                update={"status": ItemStatus.EXPIRED, "verified": True, "superseded_at": ts()}
            )
        ]
        await store.save(held)
        stored = await store.get_asset(tenant, profile.id, asset.id)
        assert stored is not None
        assert stored.status is ItemStatus.ACTIVE and stored.superseded_at is None
        assert stored.verified is True  # the content is updated in place

    async def test_save_stores_a_new_asset_active_beside_others_of_its_name(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        profile = await new_profile(store, tenant)
        first = make_asset("photo")
        await store.add_asset(tenant, profile.id, first)
        held = await store.get_by_id(tenant, profile.id)
        assert held is not None
        second = make_asset("photo", status=ItemStatus.SUPERSEDED)
        held.assets.append(second)
        await store.save(held)
        found = await store.get_by_id(tenant, profile.id)
        assert found is not None
        assert sorted(str(a.id) for a in found.assets) == sorted([str(first.id), str(second.id)])
        assert all(a.status is ItemStatus.ACTIVE for a in found.assets)
