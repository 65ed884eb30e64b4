"""Behaviour the MongoDB provider once got wrong, checked on the stored documents themselves.

* ``save`` never brings a soft-deleted, merged-away or half-merged profile back: it raises
  NotFoundError and writes nothing.
* Vault ids are scoped by tenant: another tenant may reuse any id; within one tenant a
  duplicate id is still a ConflictError.
* ``mark_orphans`` works in bounded pages, whatever the tenant's size.
* ``recover_interrupted_writes`` reports an unreachable server as ProviderUnavailableError.

They run against a real server when ``CCVAULT_TEST_MONGO_URL`` is set, else the emulation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    ItemStatus,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
    SourceType,
)
from ccvault_mongo import MongoProfileStore
from ccvault_mongo.codec import uid
from ccvault_mongo.schema import COLLECTIONS

from .conftest import migrated, open_mongo_store


@pytest.fixture(params=["off", "on"], ids=["standalone", "transactions"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[MongoProfileStore]:
    try:
        async for opened in open_mongo_store(transactions=request.param):
            yield opened
    except errors.ConfigurationError as exc:
        pytest.skip(f"the MongoDB server has no transactions: {exc}")


async def _stored(store: MongoProfileStore, tenant: UUID) -> dict[str, list[dict[str, Any]]]:
    """Every document of ``tenant`` in every collection, lease fields left out (a refused
    write may take and give back the profile's lease; that is not data)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for name in COLLECTIONS:
        docs = await store._c(name).find({"tenant_id": uid(tenant)}).to_list(None)
        found[name] = sorted(
            ({k: v for k, v in d.items() if k not in ("lock", "lock_until")} for d in docs),
            key=repr,
        )
    return found


def _asset(name: str = "scan", **extra: Any) -> ProfileAsset:
    return ProfileAsset(
        name=name,
        asset_type="document",
        storage_provider="s3",
        storage_path=f"s3://bucket/{name}",
        **extra,
    )


# ---------------------------------------------------------------------------------------
# save of a profile that is gone
# ---------------------------------------------------------------------------------------


async def test_save_of_a_soft_deleted_profile_is_not_found_and_writes_nothing(
    store: MongoProfileStore,
) -> None:
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.SMS, "+15550100")
    await store.update_field(tenant, profile.id, ProfileField(name="email", value="a@x.org"))
    loaded = await store.get_by_id(tenant, profile.id)
    assert loaded is not None
    assert await store.delete(tenant, profile.id)
    before = await _stored(store, tenant)
    loaded.fields["phone"] = ProfileField(name="phone", value="+15550199")
    with pytest.raises(errors.NotFoundError):
        await store.save(loaded)
    assert await _stored(store, tenant) == before
    assert await store.get_by_id(tenant, profile.id) is None
    # its identity was released by the delete and stays released
    assert await store.get_by_channel_identity(tenant, Channel.SMS, "+15550100") is None


async def test_save_of_a_merged_away_profile_is_not_found_and_writes_nothing(
    store: MongoProfileStore,
) -> None:
    tenant = uuid4()
    source = await store.get_or_create(tenant, Channel.SMS, "+15550101")
    target = await store.get_or_create(tenant, Channel.SMS, "+15550102")
    await store.merge_profiles(tenant, source.id, target.id)
    before = await _stored(store, tenant)
    # even with identities nobody owns, so no identity check can be what refuses it
    source.channel_identities = [
        ChannelIdentity(channel=Channel.WEB, channel_user_id="fresh-visitor", primary=True)
    ]
    with pytest.raises(errors.NotFoundError):
        await store.save(source)
    assert await _stored(store, tenant) == before
    assert await store.get_by_id(tenant, source.id) is None
    assert await store.get_by_channel_identity(tenant, Channel.WEB, "fresh-visitor") is None


async def test_save_of_a_profile_being_merged_is_not_found(store: MongoProfileStore) -> None:
    """A merge interrupted on a standalone server leaves the source marked; until the merge
    is finished nothing writes to it, save included."""
    tenant = uuid4()
    source = await store.get_or_create(tenant, Channel.SMS, "+15550103")
    target = await store.get_or_create(tenant, Channel.SMS, "+15550104")
    await store._c("profiles").update_one(
        {"tenant_id": uid(tenant), "id": uid(source.id)},
        {"$set": {"merging_into": uid(target.id)}},
    )
    before = await _stored(store, tenant)
    with pytest.raises(errors.NotFoundError):
        await store.save(source)
    assert await _stored(store, tenant) == before


async def test_save_still_creates_and_updates_a_live_profile(store: MongoProfileStore) -> None:
    tenant = uuid4()
    fresh = CustomerProfile(
        tenant_id=tenant,
        channel_identities=[
            ChannelIdentity(channel=Channel.WEB, channel_user_id="v-1", primary=True)
        ],
    )
    assert await store.save(fresh) == fresh.id
    loaded = await store.get_by_id(tenant, fresh.id)
    assert loaded is not None
    loaded.fields["email"] = ProfileField(name="email", value="a@x.org")
    assert await store.save(loaded) == fresh.id
    again = await store.get_by_id(tenant, fresh.id)
    assert again is not None and again.fields["email"].value == "a@x.org"
    [doc] = await store._c("profiles").find({"tenant_id": uid(tenant)}).to_list(None)
    assert doc["live"] is True and doc.get("deleted_at") is None


# ---------------------------------------------------------------------------------------
# ids are scoped by tenant
# ---------------------------------------------------------------------------------------


async def test_every_kind_of_id_can_be_reused_by_another_tenant(store: MongoProfileStore) -> None:
    tenant_a, tenant_b = uuid4(), uuid4()
    profile_id, field_id, asset_id = uuid4(), uuid4(), uuid4()
    definition_id, requirement_id = uuid4(), uuid4()
    agent, scenario = uuid4(), uuid4()
    for tenant, who in ((tenant_a, "a"), (tenant_b, "b")):
        assert (
            await store.save(
                CustomerProfile(
                    id=profile_id,
                    tenant_id=tenant,
                    channel_identities=[
                        ChannelIdentity(channel=Channel.WEB, channel_user_id="v", primary=True)
                    ],
                )
            )
            == profile_id
        )
        await store.update_field(
            tenant, profile_id, ProfileField(id=field_id, name="email", value=f"{who}@x.org")
        )
        await store.add_asset(
            tenant,
            profile_id,
            _asset(id=asset_id, source_item_id=field_id, source_item_type=SourceType.PROFILE_FIELD),
        )
        assert (
            await store.save_field_definition(
                ProfileFieldDefinition(
                    id=definition_id,
                    tenant_id=tenant,
                    agent_id=agent,
                    name="email",
                    value_type="string",
                    description=who,
                )
            )
            == definition_id
        )
        assert (
            await store.save_scenario_requirement(
                ScenarioFieldRequirement(
                    id=requirement_id,
                    tenant_id=tenant,
                    agent_id=agent,
                    scenario_id=scenario,
                    field_name="email",
                )
            )
            == requirement_id
        )
    # each tenant reads its own copy
    for tenant, who in ((tenant_a, "a"), (tenant_b, "b")):
        profile = await store.get_by_id(tenant, profile_id)
        assert profile is not None and profile.tenant_id == tenant
        assert profile.fields["email"].id == field_id
        assert profile.fields["email"].value == f"{who}@x.org"
        assert [a.id for a in profile.assets] == [asset_id]
        definition = await store.get_field_definition(tenant, agent, "email")
        assert definition is not None and definition.description == who
        assert [r.id for r in await store.get_scenario_requirements(tenant, scenario)] == [
            requirement_id
        ]
        chain = await store.get_derivation_chain(tenant, asset_id, "profile_asset")
        assert [entry["id"] for entry in chain] == [field_id, asset_id]
    # a write in one tenant leaves the other's item with the same id alone
    await store.update_field(tenant_b, profile_id, ProfileField(name="email", value="b2@x.org"))
    await store.delete_item(tenant_b, asset_id, "profile_asset")
    await store.delete_item(tenant_b, field_id, "profile_field")
    assert await store.purge_profile(tenant_b, profile_id)
    profile = await store.get_by_id(tenant_a, profile_id)
    assert profile is not None and profile.fields["email"].value == "a@x.org"
    assert [a.id for a in profile.assets] == [asset_id]
    assert await store.mark_orphans(tenant_a) == 0


async def test_a_duplicate_id_within_one_tenant_is_still_a_conflict(
    store: MongoProfileStore,
) -> None:
    tenant = uuid4()
    first = await store.get_or_create(tenant, Channel.SMS, "+15550105")
    second = await store.get_or_create(tenant, Channel.SMS, "+15550106")
    field = ProfileField(name="email", value="a@x.org")
    asset = _asset()
    await store.update_field(tenant, first.id, field)
    await store.add_asset(tenant, first.id, asset)
    with pytest.raises(errors.ConflictError):
        await store.update_field(
            tenant, second.id, ProfileField(id=field.id, name="phone", value="1")
        )
    with pytest.raises(errors.ConflictError):
        await store.update_field(
            tenant, first.id, ProfileField(id=field.id, name="phone", value="1")
        )
    with pytest.raises(errors.ConflictError):
        await store.add_asset(tenant, second.id, _asset(id=asset.id))
    agent = uuid4()
    definition = ProfileFieldDefinition(
        tenant_id=tenant, agent_id=agent, name="email", value_type="string"
    )
    await store.save_field_definition(definition)
    with pytest.raises(errors.ConflictError):  # the same id under another natural key
        await store.save_field_definition(definition.model_copy(update={"name": "phone"}))
    requirement = ScenarioFieldRequirement(
        tenant_id=tenant, agent_id=agent, scenario_id=uuid4(), field_name="email"
    )
    await store.save_scenario_requirement(requirement)
    with pytest.raises(errors.ConflictError):
        await store.save_scenario_requirement(requirement.model_copy(update={"field_name": "x"}))
    # nothing of the refused writes was stored
    for profile_id in (first.id, second.id):
        assert len(await store.get_field_history(tenant, profile_id, "phone")) == 0
    loaded = await store.get_by_id(tenant, second.id)
    assert loaded is not None and loaded.assets == []
    assert [d.name for d in await store.get_field_definitions(tenant, agent)] == ["email"]


# ---------------------------------------------------------------------------------------
# mark_orphans in bounded pages
# ---------------------------------------------------------------------------------------


async def test_mark_orphans_pages_through_a_tenant_and_marks_every_orphan(
    store: MongoProfileStore,
) -> None:
    store.orphan_batch_size = 3
    tenant = uuid4()
    profile = (await store.get_or_create(tenant, Channel.SMS, "+15550107")).id
    kept = ProfileField(name="origin", value="o")
    await store.update_field(tenant, profile, kept)
    gone_field, gone_asset = uuid4(), uuid4()  # sources never stored (or long deleted)
    orphans: set[UUID] = set()
    alive: set[UUID] = set()
    for i in range(8):
        item = ProfileField(
            name=f"lost{i}",
            value=i,
            source_item_id=gone_field,
            source_item_type=SourceType.PROFILE_FIELD,
        )
        await store.update_field(tenant, profile, item)
        orphans.add(item.id)
    for i in range(4):
        item = ProfileField(
            name=f"kept{i}",
            value=i,
            source_item_id=kept.id,
            source_item_type=SourceType.PROFILE_FIELD,
        )
        await store.update_field(tenant, profile, item)
        alive.add(item.id)
    for i in range(4):
        asset = _asset(
            name=f"scan{i}",
            source_item_id=gone_asset if i % 2 else kept.id,
            source_item_type=(SourceType.PROFILE_ASSET if i % 2 else SourceType.PROFILE_FIELD),
        )
        await store.add_asset(tenant, profile, asset)
        (orphans if i % 2 else alive).add(asset.id)
    other = uuid4()  # another tenant's orphan is not this tenant's business
    other_profile = (await store.get_or_create(other, Channel.SMS, "+15550108")).id
    await store.update_field(
        other,
        other_profile,
        ProfileField(
            name="lost",
            value=0,
            source_item_id=gone_field,
            source_item_type=SourceType.PROFILE_FIELD,
        ),
    )

    assert await store.mark_orphans(tenant) == len(orphans) == 10
    exported = await store.export_profile(tenant, profile)
    statuses = {
        UUID(str(item["id"])): item["status"]
        for item in [
            *(v for versions in exported["profile"]["field_history"].values() for v in versions),
            *exported["profile"]["asset_history"],
        ]
    }
    assert {i for i, s in statuses.items() if s == ItemStatus.ORPHANED.value} == orphans
    assert all(statuses[i] == ItemStatus.ACTIVE.value for i in alive)
    assert await store.mark_orphans(tenant) == 0
    assert await store.mark_orphans(other) == 1


# ---------------------------------------------------------------------------------------
# recover_interrupted_writes: driver errors become vault errors
# ---------------------------------------------------------------------------------------


async def test_recover_interrupted_writes_on_an_unreachable_server_is_provider_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cut through the emulation (a real server cannot be made unreachable from here)."""
    from pymongo.errors import AutoReconnect

    from ccvault_mongo import MongoSettings
    from ccvault_mongo.emulation import EmulatedMongoClient

    client = EmulatedMongoClient()
    async with await migrated(
        MongoProfileStore(MongoSettings(database="cut"), client=client)
    ) as opened:
        assert await opened.recover_interrupted_writes() == 0

        async def unreachable(session: Any, call: Any) -> Any:
            raise AutoReconnect("connection refused")

        monkeypatch.setattr(client, "_execute", unreachable)
        with pytest.raises(errors.ProviderUnavailableError, match="unreachable"):
            await opened.recover_interrupted_writes()
