"""The MongoDB-specific code paths, checked by the exact commands the store sends.

These tests always use the emulation's recording seam (no server needed): what is
asserted is what the store hands to the driver, which is what a real server would receive.
``test_every_recorded_call_binds_to_the_real_async_driver`` checks that each recorded call
is one PyMongo's ``AsyncCollection`` accepts, with the same arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from bson.binary import Binary
from pymongo.asynchronous.collection import AsyncCollection

from ccvault import errors
from ccvault.models import (
    Channel,
    ChannelIdentity,
    ItemStatus,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
    SourceType,
)
from ccvault_mongo import MongoProfileStore, MongoSettings
from ccvault_mongo.codec import dt, uid
from ccvault_mongo.emulation import Command, EmulatedMongoClient
from ccvault_mongo.schema import COLLECTIONS, INDEXES, PENDING, VERSION_COLLECTION

from .conftest import migrated

NOW = datetime(2026, 5, 1, 9, 30, 0, 123456, tzinfo=UTC)


class FixedClockStore(MongoProfileStore):
    """A store whose clock stands still, so timestamps in commands are predictable."""

    def now(self) -> datetime:
        return NOW


async def _open(transactions: bool) -> AsyncIterator[tuple[MongoProfileStore, EmulatedMongoClient]]:
    client = EmulatedMongoClient(transactions=transactions)
    settings = MongoSettings(database="cmd", transactions="on" if transactions else "off")
    async with await migrated(FixedClockStore(settings, client=client)) as store:
        client.clear_commands()
        yield store, client


@pytest.fixture
async def standalone() -> AsyncIterator[tuple[MongoProfileStore, EmulatedMongoClient]]:
    async for pair in _open(False):
        yield pair


@pytest.fixture
async def replica_set() -> AsyncIterator[tuple[MongoProfileStore, EmulatedMongoClient]]:
    async for pair in _open(True):
        yield pair


def _calls(client: EmulatedMongoClient) -> list[tuple[str, str]]:
    return [(c.collection, c.method) for c in client.commands]


async def _profile(store: MongoProfileStore, tenant: UUID) -> UUID:
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, f"+1555{uuid4().int % 10**7}")
    return profile.id


# ---------------------------------------------------------------------------------------
# setup: indexes
# ---------------------------------------------------------------------------------------


async def test_setup_asks_hello_then_only_reads_the_schema_version() -> None:
    client = EmulatedMongoClient()
    store = MongoProfileStore(MongoSettings(database="idx"), client=client)
    with pytest.raises(errors.SchemaNotReadyError, match="ccvault migrate"):
        await store.setup()
    assert [(c.collection, c.method) for c in client.commands] == [
        ("admin", "command"),
        (VERSION_COLLECTION, "find"),
    ]
    assert client.commands[0] == Command("admin", "command", ("hello",))
    assert client._sync["idx"].list_collection_names() == []  # nothing created


async def test_migrate_creates_every_index_in_one_command_per_collection() -> None:
    client = EmulatedMongoClient()
    report = await MongoProfileStore(MongoSettings(database="idx"), client=client).migrate()
    assert [s.version for s in report.applied] == [1] and report.status.up_to_date
    again = await MongoProfileStore(MongoSettings(database="idx"), client=client).migrate()
    assert again.applied == ()
    async with MongoProfileStore(MongoSettings(database="idx"), client=client) as store:
        assert store.transactions_enabled is False
    assert client.commands[0] == Command("admin", "command", ("hello",))
    creates = [c for c in client.commands if c.method == "create_indexes"]
    creates = creates[: len(COLLECTIONS)]  # the first migrate's; the second finds them done
    assert [c.collection for c in creates] == list(COLLECTIONS)
    for command in creates:
        assert command.args == ([m.document for m in INDEXES[command.collection]],)


def test_the_index_definitions_are_exactly_these() -> None:
    documents = {name: [dict(m.document) for m in models] for name, models in INDEXES.items()}
    fields = {d["name"]: d for d in documents["fields"]}
    assert dict(fields["one_active_field"]["key"]) == {"tenant_id": 1, "profile_id": 1, "name": 1}
    assert fields["one_active_field"]["unique"] is True
    assert fields["one_active_field"]["partialFilterExpression"] == {"status": "active"}
    assert dict(fields["fields_by_source_item"]["key"]) == {"tenant_id": 1, "source_item_id": 1}
    assert dict(fields["fields_by_expiry"]["key"]) == {"tenant_id": 1, "status": 1, "expires_at": 1}
    identities = {d["name"]: d for d in documents["identities"]}
    assert dict(identities["identity_unique"]["key"]) == {
        "tenant_id": 1,
        "channel": 1,
        "channel_user_id": 1,
    }
    assert identities["identity_unique"]["unique"] is True
    requirements = {d["name"]: d for d in documents["requirements"]}
    assert list(requirements["requirement_natural_key"]["key"]) == [
        "tenant_id",
        "scenario_id",
        "step_id",
        "rule_id",
        "field_name",
    ]
    assert requirements["requirement_natural_key"]["unique"] is True
    definitions = {d["name"]: d for d in documents["definitions"]}
    assert list(definitions["definition_natural_key"]["key"]) == ["tenant_id", "agent_id", "name"]
    # vault ids are unique per tenant, not globally (``_id`` is the driver's ObjectId)
    for collection, name in [
        ("profiles", "profile_id_unique"),
        ("fields", "field_id_unique"),
        ("assets", "asset_id_unique"),
        ("definitions", "definition_id_unique"),
        ("requirements", "requirement_id_unique"),
    ]:
        [index] = [d for d in documents[collection] if d["name"] == name]
        assert list(index["key"]) == ["tenant_id", "id"] and index["unique"] is True
        assert "partialFilterExpression" not in index
    # shardable on tenant: every index but the recovery one starts with tenant_id
    for name, docs in documents.items():
        for doc in docs:
            if doc["name"] != "interrupted_writes":
                assert next(iter(doc["key"])) == "tenant_id", (name, doc["name"])


async def test_setup_is_idempotent_on_a_database_with_data() -> None:
    client = EmulatedMongoClient()
    settings = MongoSettings(database="twice")
    tenant = uuid4()
    async with await migrated(MongoProfileStore(settings, client=client)) as store:
        profile = await _profile(store, tenant)
        await store.update_field(tenant, profile, ProfileField(name="email", value="a"))
        await store.update_field(tenant, profile, ProfileField(name="email", value="b"))
    async with MongoProfileStore(settings, client=client) as again:
        field = await again.get_field(tenant, profile, "email")
        assert field is not None and field.value == "b"


async def test_the_partial_unique_index_refuses_a_second_active_version(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    from pymongo.errors import DuplicateKeyError

    store, client = standalone
    tenant = uuid4()
    profile = await _profile(store, tenant)
    await store.update_field(tenant, profile, ProfileField(name="email", value="a"))
    rogue = store._field_doc(tenant, profile, ProfileField(name="email", value="b"), 99)
    with pytest.raises(DuplicateKeyError):
        await client["cmd"]["fields"].insert_one(rogue)
    rogue["status"] = "superseded"
    await client["cmd"]["fields"].insert_one(rogue)  # any other status is fine


# ---------------------------------------------------------------------------------------
# fields: the standalone ordering and the transaction
# ---------------------------------------------------------------------------------------


async def test_standalone_supersede_is_pending_then_supersede_then_activate(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    store, client = standalone
    tenant = uuid4()
    profile = await _profile(store, tenant)
    first = ProfileField(name="email", value="a", collected_at=NOW)
    await store.update_field(tenant, profile, first)
    client.clear_commands()
    second = ProfileField(name="email", value="b", collected_at=NOW)
    await store.update_field(tenant, profile, second)
    t, p, now = uid(tenant), uid(profile), dt(NOW)
    name_key = {"tenant_id": t, "profile_id": p, "name": "email"}
    lock, pending, supersede, activate, unlock = client.commands
    # the profile's write lease: one conditional update that also claims the write order
    token = lock.args[1]["$set"]["lock"]
    lease_until = lock.args[1]["$set"]["lock_until"]
    assert lock == Command(
        "profiles",
        "find_one_and_update",
        (
            {
                "tenant_id": t,
                "id": p,
                "live": True,
                "merging_into": None,
                "$or": [
                    {"lock": None},
                    {"lock_until": {"$lte": lock.args[0]["$or"][1]["lock_until"]["$lte"]}},
                ],
            },
            {"$set": {"lock": token, "lock_until": lease_until}, "$inc": {"write_seq": 1}},
        ),
        {"projection": {"write_seq": 1, "lock": 1}},
    )
    assert lease_until > lock.args[0]["$or"][1]["lock_until"]["$lte"]
    assert pending.method == "insert_one"
    assert pending.args[0]["status"] == PENDING
    assert pending.args[0]["pending_since"] == now
    assert pending.args[0]["id"] == uid(second.id)
    assert supersede == Command(
        "fields",
        "update_one",
        (
            {**name_key, "status": "active", "id": {"$ne": uid(second.id)}},
            {
                "$set": {
                    "status": "superseded",
                    "superseded_by_id": uid(second.id),
                    "superseded_at": now,
                    "updated_at": now,
                }
            },
        ),
    )
    assert activate == Command(
        "fields",
        "update_one",
        (
            {"tenant_id": t, "id": uid(second.id), "status": PENDING},
            {"$set": {"status": "active"}, "$unset": {"pending_since": ""}},
        ),
    )
    assert unlock == Command(
        "profiles",
        "update_one",
        ({"tenant_id": t, "id": p, "lock": token}, {"$set": {"lock": None, "lock_until": None}}),
    )
    assert not any(c.in_transaction for c in client.commands)


async def test_standalone_without_supersede_is_one_guarded_insert(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    store, client = standalone
    tenant = uuid4()
    profile = await _profile(store, tenant)
    await store.update_field(tenant, profile, ProfileField(name="email", value="a"))
    client.clear_commands()
    second = ProfileField(name="email", value="b")
    with pytest.raises(errors.ActiveFieldConflictError):
        await store.update_field(tenant, profile, second, supersede_existing=False)
    # lease, expire a stale ACTIVE one of this name (under the lease), the insert the
    # unique index refuses, which index, lease given back: the profile's other overdue
    # versions are swept only after an insert that succeeded, so a refusal writes nothing
    assert _calls(client) == [
        ("profiles", "find_one_and_update"),
        ("fields", "update_one"),
        ("fields", "insert_one"),
        ("fields", "find_one"),
        ("profiles", "update_one"),
    ]
    expire = client.commands[1]
    assert expire.args[0]["expires_at"] == {"$lte": dt(NOW)}
    assert expire.args[1] == {"$set": {"status": "expired", "updated_at": dt(NOW)}}
    assert client.commands[3].args[0] == {"tenant_id": uid(tenant), "id": uid(second.id)}
    # accepted: the same, then the profile's overdue versions, then the lease back
    client.clear_commands()
    third = ProfileField(name="phone", value="c")
    await store.update_field(tenant, profile, third, supersede_existing=False)
    assert _calls(client) == [
        ("profiles", "find_one_and_update"),
        ("fields", "update_one"),
        ("fields", "insert_one"),
        ("fields", "update_many"),
        ("profiles", "update_one"),
    ]
    sweep = client.commands[3]
    assert sweep.args[0] == {
        "tenant_id": uid(tenant),
        "profile_id": uid(profile),
        "status": "active",
        "expires_at": {"$lte": dt(NOW)},
    }


async def test_transactional_supersede_runs_every_step_in_one_transaction(
    replica_set: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    store, client = replica_set
    assert store.transactions_enabled is True
    tenant = uuid4()
    profile = await _profile(store, tenant)
    await store.update_field(tenant, profile, ProfileField(name="email", value="a"))
    client.clear_commands()
    committed = client.committed_transactions
    second = ProfileField(name="email", value="b")
    await store.update_field(tenant, profile, second)
    assert _calls(client) == [
        ("profiles", "find_one_and_update"),
        ("fields", "find_one"),
        ("fields", "update_one"),
        ("fields", "insert_one"),
    ]
    assert all(c.in_transaction for c in client.commands)
    assert client.commands[3].args[0]["status"] == "active"  # no pending step needed
    assert client.committed_transactions == committed + 1


async def test_an_aborted_transaction_leaves_nothing_behind(
    replica_set: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    store, client = replica_set
    tenant = uuid4()
    profile = await _profile(store, tenant)
    first = ProfileField(name="email", value="a")
    await store.update_field(tenant, profile, first)
    before = await store.export_profile(tenant, profile)
    aborted = client.aborted_transactions
    with pytest.raises(errors.ConflictError):
        await store.update_field(tenant, profile, ProfileField(id=first.id, name="phone", value=1))
    assert client.aborted_transactions == aborted + 1
    after = await store.export_profile(tenant, profile)
    assert after["profile"] == before["profile"]


async def test_the_standalone_loser_of_a_race_supersedes_the_winner_and_retries() -> None:
    """Another writer's version becomes ACTIVE between this writer's supersede and its
    activation: the unique index refuses the activation, the writer supersedes the winner
    and activates on the second try. One ACTIVE version at every step, none lost."""
    tenant = uuid4()
    rival = ProfileField(name="email", value="rival")

    class RacingClient(EmulatedMongoClient):
        raced = False

        def _record(
            self,
            collection: str,
            method: str,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            session: Any,
        ) -> None:
            super()._record(collection, method, args, kwargs, session)
            if method == "update_one" and args[0].get("status") == PENDING and not self.raced:
                self.raced = True  # the rival's version lands right before our activation
                doc = store._field_doc(tenant, profile, rival, 99)
                self._sync["race"]["fields"].insert_one(doc)

    client = RacingClient()
    settings = MongoSettings(database="race", transactions="off")
    async with await migrated(FixedClockStore(settings, client=client)) as store:
        profile = await _profile(store, tenant)
        first = ProfileField(name="email", value="first")
        await store.update_field(tenant, profile, first)  # raced: first loses to rival
        history = {f.value: f for f in await store.get_field_history(tenant, profile, "email")}
        assert history["first"].status is ItemStatus.ACTIVE
        assert history["rival"].status is ItemStatus.SUPERSEDED
        assert history["rival"].superseded_by_id == first.id
        activations = [
            c
            for c in client.commands
            if c.method == "update_one" and c.args[0].get("status") == PENDING
        ]
        assert len(activations) == 2  # refused by the unique index once, then accepted
        second = ProfileField(name="email", value="second")
        await store.update_field(tenant, profile, second)
        history = {f.value: f for f in await store.get_field_history(tenant, profile, "email")}
        assert [v for v, f in history.items() if f.status is ItemStatus.ACTIVE] == ["second"]
        assert history["first"].superseded_by_id == second.id


async def test_interrupted_writes_are_rolled_forward_by_setup() -> None:
    client = EmulatedMongoClient()
    settings = MongoSettings(database="crash", transactions="off")
    tenant = uuid4()
    async with await migrated(MongoProfileStore(settings, client=client)) as store:
        profile = await _profile(store, tenant)
        old = ProfileField(name="email", value="old")
        await store.update_field(tenant, profile, old)
        # a process died after storing its version and superseding the ACTIVE one
        stuck = ProfileField(name="email", value="new")
        doc = store._field_doc(tenant, profile, stuck, 9)
        doc.update(status=PENDING, pending_since=dt(store.now() - timedelta(minutes=5)))
        await client["crash"]["fields"].insert_one(doc)
        await client["crash"]["fields"].update_one(
            {"tenant_id": uid(tenant), "id": uid(old.id)},
            {"$set": {"status": "superseded", "superseded_by_id": uid(stuck.id)}},
        )
        assert await store.get_field(tenant, profile, "email") is None  # pending is invisible
        assert len(await store.get_field_history(tenant, profile, "email")) == 1
    async with MongoProfileStore(settings, client=client) as restarted:
        field = await restarted.get_field(tenant, profile, "email")
        assert field is not None and field.id == stuck.id
        history = await restarted.get_field_history(tenant, profile, "email")
        assert [f.id for f in history if f.status is ItemStatus.SUPERSEDED] == [old.id]


async def test_an_interrupted_merge_is_finished_by_calling_merge_again(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    store, client = standalone
    tenant = uuid4()
    source, target = await _profile(store, tenant), await _profile(store, tenant)
    await store.update_field(tenant, source, ProfileField(name="email", value="s"))
    # the merge died right after marking the source
    await client["cmd"]["profiles"].update_one(
        {"tenant_id": uid(tenant), "id": uid(source)}, {"$set": {"merging_into": uid(target)}}
    )
    with pytest.raises(errors.NotFoundError):  # nothing writes to a source being merged
        await store.update_field(tenant, source, ProfileField(name="phone", value="1"))
    assert await store.merge_profiles(tenant, source, target)
    merged = await store.get_by_id(tenant, target)
    assert merged is not None and merged.fields["email"].value == "s"
    assert await store.get_by_id(tenant, source) is None


async def test_identities_left_by_an_interrupted_delete_are_released(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    store, client = standalone
    tenant = uuid4()
    first = await store.get_or_create(tenant, Channel.SMS, "+15550001")
    # the delete died after the profile stopped being live, before its identities went
    await client["cmd"]["profiles"].update_one(
        {"tenant_id": uid(tenant), "id": uid(first.id)}, {"$set": {"live": False}}
    )
    assert await store.get_by_channel_identity(tenant, Channel.SMS, "+15550001") is None
    fresh = await store.get_or_create(tenant, Channel.SMS, "+15550001")
    assert fresh.id != first.id
    assert (
        await store.link_channel(
            tenant, fresh.id, ChannelIdentity(channel=Channel.SMS, channel_user_id="+15550001")
        )
        is False
    )


# ---------------------------------------------------------------------------------------
# reads: bounded round trips; expiry; lineage; aggregation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("transactions", [False, True])
@pytest.mark.parametrize("history", [False, True])
async def test_a_whole_profile_read_costs_five_queries_whatever_the_field_count(
    transactions: bool, history: bool
) -> None:
    async for store, client in _open(transactions):
        await _check_read_cost(store, client, history)
        # in a transaction the five queries read one snapshot
        assert all(c.in_transaction for c in client.commands) is transactions


async def _check_read_cost(
    store: MongoProfileStore, client: EmulatedMongoClient, history: bool
) -> None:
    tenant = uuid4()
    counts = []
    for n in (1, 60):
        profile = await _profile(store, tenant)
        for i in range(n):
            await store.update_field(tenant, profile, ProfileField(name=f"f{i}", value=i))
            await store.update_field(tenant, profile, ProfileField(name=f"f{i}", value=-i))
        client.clear_commands()
        read = await store.get_by_id(tenant, profile, include_history=history)
        assert read is not None and len(read.fields) == n
        counts.append(_calls(client))
    assert (
        counts[0]
        == counts[1]
        == [
            ("profiles", "find_one"),
            ("identities", "find"),
            ("fields", "find"),
            ("assets", "find"),
            ("consents", "find"),
        ]
    )
    fields_query = client.commands[2]
    expected_status: Any = {"$in": [s.value for s in ItemStatus]} if history else "active"
    assert fields_query.args[0]["status"] == expected_status
    assert fields_query.kwargs["sort"] == [("name", 1), ("collected_at", -1), ("seq", -1)]


async def test_expire_stale_fields_is_one_bounded_find_and_one_update_many_per_batch(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    store, client = standalone
    tenant = uuid4()
    profile = await _profile(store, tenant)
    for i in range(3):
        await store.update_field(
            tenant, profile, ProfileField(name=f"f{i}", value=i, expires_at=NOW - timedelta(1))
        )
    client.clear_commands()
    assert await store.expire_stale_fields(tenant, batch_size=2) == 3
    due = {"tenant_id": uid(tenant), "status": "active", "expires_at": {"$lte": dt(NOW)}}
    # per batch: the ids of at most 2 due versions, then one update_many over those ids
    assert _calls(client) == [("fields", "find"), ("fields", "update_many")] * 2
    finds = [c for c in client.commands if c.method == "find"]
    assert all(c.args == (due,) and c.kwargs["limit"] == 2 for c in finds)
    marks = [c for c in client.commands if c.method == "update_many"]
    assert [len(c.args[0]["id"]["$in"]) for c in marks] == [2, 1]
    assert all(c.args[1] == {"$set": {"status": "expired", "updated_at": dt(NOW)}} for c in marks)
    client.clear_commands()
    assert await store.expire_stale_fields(tenant, profile) == 0
    assert list(client.commands[0].args[0]) == ["tenant_id", "profile_id", "status", "expires_at"]


async def test_lineage_is_a_bounded_loop_that_stops_on_a_cycle(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    store, client = standalone
    tenant = uuid4()
    profile = await _profile(store, tenant)
    a, b = uuid4(), uuid4()
    # a <- b <- a: a cycle written directly (the store never checks links on write)
    await store.update_field(
        tenant,
        profile,
        ProfileField(
            id=a, name="a", value=1, source_item_id=b, source_item_type=SourceType.PROFILE_FIELD
        ),
    )
    await store.update_field(
        tenant,
        profile,
        ProfileField(
            id=b, name="b", value=2, source_item_id=a, source_item_type=SourceType.PROFILE_FIELD
        ),
    )
    client.clear_commands()
    chain = await store.get_derivation_chain(tenant, b, "profile_field")
    assert [entry["id"] for entry in chain] == [a, b]
    # b, then a; a's source b was seen already: the walk stops without a third query
    assert _calls(client) == [("fields", "find_one")] * 2


async def test_count_items_by_status_is_this_aggregation(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    store, client = standalone
    tenant = uuid4()
    profile = await _profile(store, tenant)
    await store.update_field(tenant, profile, ProfileField(name="email", value="a"))
    await store.update_field(tenant, profile, ProfileField(name="email", value="b"))
    await store.add_asset(
        tenant,
        profile,
        ProfileAsset(
            name="scan", asset_type="document", storage_provider="s3", storage_path="s3://x"
        ),
    )
    client.clear_commands()
    counts = await store.count_items_by_status(tenant)
    assert counts["fields"]["active"] == 1 and counts["fields"]["superseded"] == 1
    assert counts["assets"]["active"] == 1
    pipeline = [
        {"$match": {"tenant_id": uid(tenant), "status": {"$in": [s.value for s in ItemStatus]}}},
        {"$group": {"_id": "$status", "n": {"$sum": 1}}},
    ]
    assert client.commands == [
        Command("fields", "aggregate", (pipeline,)),
        Command("assets", "aggregate", (pipeline,)),
    ]


# ---------------------------------------------------------------------------------------
# every call: tenant first, and a call the real async driver accepts
# ---------------------------------------------------------------------------------------


async def _workload(store: MongoProfileStore) -> None:
    tenant, agent, scenario = uuid4(), uuid4(), uuid4()
    source = await store.get_or_create(tenant, Channel.WEB, "visitor-1")
    target = await store.get_or_create(tenant, Channel.EMAIL, "ada@example.com")
    await store.link_channel(
        tenant, target.id, ChannelIdentity(channel=Channel.SMS, channel_user_id="+15550002")
    )
    email = ProfileField(name="email", value="a@example.com")
    await store.update_field(tenant, source.id, email)
    await store.update_field(
        tenant, target.id, ProfileField(name="email", value="b@example.com", verified=True)
    )
    await store.update_field(
        tenant,
        target.id,
        ProfileField(
            name="nickname",
            value="ada",
            source_item_id=email.id,
            source_item_type=SourceType.PROFILE_FIELD,
            expires_at=NOW - timedelta(1),
        ),
        supersede_existing=False,
    )
    asset = ProfileAsset(
        name="scan",
        asset_type="document",
        storage_provider="s3",
        storage_path="s3://x",
        source_item_id=email.id,
        source_item_type=SourceType.PROFILE_FIELD,
    )
    await store.add_asset(tenant, target.id, asset, supersede_existing=True)
    await store.get_field(tenant, target.id, "email", status=None)
    await store.get_field_history(tenant, target.id, "email")
    await store.get_asset(tenant, target.id, asset.id)
    await store.get_asset_by_name(tenant, target.id, "scan")
    await store.get_derivation_chain(tenant, asset.id, "profile_asset")
    await store.get_derived_items(tenant, email.id)
    await store.check_has_dependents(tenant, email.id)
    await store.expire_stale_fields(tenant)
    await store.merge_profiles(tenant, source.id, target.id)
    await store.get_by_customer_id(tenant, target.customer_id, include_history=True)
    await store.get_by_channel_identity(tenant, Channel.WEB, "visitor-1")
    profile = await store.get_by_id(tenant, target.id)
    assert profile is not None
    await store.save(profile)
    await store.save_field_definition(
        ProfileFieldDefinition(
            tenant_id=tenant,
            agent_id=agent,
            name="prefs",
            value_type="json",
            allowed_values=[{"a.b": 1}],
        )
    )
    await store.get_field_definitions(tenant, agent)
    await store.get_field_definition(tenant, agent, "email")
    await store.save_scenario_requirement(
        ScenarioFieldRequirement(
            tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="email"
        )
    )
    await store.get_scenario_requirements(tenant, scenario)
    await store.get_missing_fields(tenant, profile, scenario)
    await store.delete_scenario_requirements(tenant, scenario)
    await store.delete_field_definition(tenant, agent, "prefs")
    await store.mark_orphans(tenant)
    await store.count_items_by_status(tenant)
    await store.export_profile(tenant, target.id)
    await store.list_profile_ids(tenant)
    await store.rewrite_field_payloads(
        tenant, target.id, {email.id: ({"big": 2**70}, {"key.id": "k2"})}
    )
    await store.delete_item(tenant, asset.id, "profile_asset")
    await store.delete(tenant, target.id)
    await store.purge_profile(tenant, target.id)


#: calls that cannot name one tenant: the server handshake, index builds, the list of
#: tenants, and the start-up sweep for interrupted writes
_NOT_TENANT_SCOPED = {("admin", "command"), ("profiles", "distinct")}


@pytest.mark.parametrize("transactions", [False, True])
async def test_every_query_filters_by_tenant_first(transactions: bool) -> None:
    async for store, client in _open(transactions):
        await _workload(store)
        await store.list_tenant_ids()
        checked = 0
        for command in client.commands:
            if (
                command.method == "create_indexes"
                or (command.collection, command.method) in _NOT_TENANT_SCOPED
            ):
                continue
            if command.method in ("insert_one", "insert_many"):
                docs = command.args[0] if command.method == "insert_many" else [command.args[0]]
                assert all("tenant_id" in d for d in docs), command
                continue
            query = (
                command.args[0][0]["$match"] if command.method == "aggregate" else (command.args[0])
            )
            assert next(iter(query)) == "tenant_id", command
            assert isinstance(query["tenant_id"], Binary), command
            checked += 1
        assert checked > 60


async def test_every_recorded_call_is_one_the_real_async_driver_accepts() -> None:
    """Each call binds to ``AsyncCollection``'s signature; every filter, update and document
    encodes to BSON with the driver's default codec options (no stray native UUID); every
    update document is one the driver accepts; ``find`` arguments build a real ``AsyncCursor``
    (an unconnected ``AsyncMongoClient``: no server needed to validate them)."""
    import bson
    from pymongo import AsyncMongoClient
    from pymongo.common import validate_ok_for_update

    real = AsyncMongoClient("mongodb://127.0.0.1:9", connect=False)
    try:
        for transactions in (False, True):
            async for store, client in _open(transactions):
                await _workload(store)
                await store.list_tenant_ids()
                for command in client.commands:
                    if command.collection == "admin":
                        continue
                    kwargs = dict(command.kwargs)
                    if command.in_transaction:
                        kwargs["session"] = None
                    method = getattr(AsyncCollection, command.method)
                    inspect.signature(method).bind(None, *command.args, **kwargs)
                    collection = real["check"][command.collection]
                    if command.method in ("find", "find_one"):
                        collection.find(*command.args, **command.kwargs)
                    if command.method in ("update_one", "update_many", "find_one_and_update"):
                        validate_ok_for_update(command.args[1])
                    documents = (
                        command.args[0]
                        if command.method in ("insert_many", "aggregate", "create_indexes")
                        else [a for a in command.args if isinstance(a, dict)]
                    )
                    for document in documents:
                        bson.encode(document)
    finally:
        await real.close()


def test_the_emulated_collection_has_the_async_shape_of_the_real_one() -> None:
    from ccvault_mongo.emulation import EmulatedCollection

    used = [name for name in vars(EmulatedCollection) if not name.startswith("_")]
    assert "find" in used and "aggregate" in used
    for name in used:
        real = getattr(AsyncCollection, name)
        fake = getattr(EmulatedCollection, name)
        assert inspect.iscoroutinefunction(real) == inspect.iscoroutinefunction(fake), name


# ---------------------------------------------------------------------------------------
# the standalone write lease
# ---------------------------------------------------------------------------------------


async def test_a_writer_waits_for_the_lease_and_then_writes(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    import asyncio

    store, client = standalone
    tenant = uuid4()
    profile = await _profile(store, tenant)
    key = {"tenant_id": uid(tenant), "id": uid(profile)}
    held_until = dt(datetime.now(UTC) + timedelta(minutes=5))
    await client["cmd"]["profiles"].update_one(
        key, {"$set": {"lock": "someone-else", "lock_until": held_until}}
    )
    client.clear_commands()
    writer = asyncio.ensure_future(
        store.update_field(tenant, profile, ProfileField(name="email", value="after"))
    )

    def attempts() -> int:
        return sum(1 for c in client.commands if c.method == "find_one_and_update")

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while attempts() < 3:  # it has found the lease taken, more than once
        assert loop.time() < deadline and not writer.done()
        await asyncio.sleep(0.001)
    assert await store.get_field(tenant, profile, "email") is None
    await client["cmd"]["profiles"].update_one(key, {"$set": {"lock": None}})
    await asyncio.wait_for(writer, 10)
    field = await store.get_field(tenant, profile, "email")
    assert field is not None and field.value == "after"
    doc = await client["cmd"]["profiles"].find_one(key)
    assert doc is not None and doc["lock"] is None


async def test_an_expired_lease_is_taken_over_and_the_dead_writers_version_finished(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    store, client = standalone
    tenant = uuid4()
    profile = await _profile(store, tenant)
    old = ProfileField(name="email", value="old")
    await store.update_field(tenant, profile, old)
    # a writer died holding the lease, after storing its version as pending
    dead = ProfileField(name="email", value="dead")
    doc = store._field_doc(tenant, profile, dead, 40)
    doc.update(status=PENDING, pending_since=dt(NOW))
    await client["cmd"]["fields"].insert_one(doc)
    await client["cmd"]["profiles"].update_one(
        {"tenant_id": uid(tenant), "id": uid(profile)},
        {"$set": {"lock": "dead-writer", "lock_until": dt(datetime.now(UTC) - timedelta(1))}},
    )
    new = ProfileField(name="email", value="new")
    await store.update_field(tenant, profile, new)
    history = {f.value: f for f in await store.get_field_history(tenant, profile, "email")}
    assert history["old"].superseded_by_id == dead.id  # the dead write was finished first
    assert history["dead"].superseded_by_id == new.id
    assert history["new"].status is ItemStatus.ACTIVE


async def test_a_purge_waits_for_the_writer_holding_the_lease(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    import asyncio

    store, client = standalone
    tenant = uuid4()
    profile = await _profile(store, tenant)
    key = {"tenant_id": uid(tenant), "id": uid(profile)}
    await client["cmd"]["profiles"].update_one(
        key, {"$set": {"lock": "writer", "lock_until": dt(datetime.now(UTC) + timedelta(1))}}
    )
    client.clear_commands()
    purge = asyncio.ensure_future(store.purge_profile(tenant, profile))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while sum(1 for c in client.commands if c.method == "find_one_and_update") < 3:
        assert loop.time() < deadline and not purge.done()
        await asyncio.sleep(0.001)
    # hidden from reads already, but nothing deleted while the writer holds the lease
    assert await store.get_by_id(tenant, profile) is None
    assert await client["cmd"]["identities"].count_documents({"profile_id": uid(profile)}) == 1
    # the writer in flight finishes its version, then gives the lease back
    late = store._field_doc(tenant, profile, ProfileField(name="late", value=1), 99)
    await client["cmd"]["fields"].insert_one(late)
    await client["cmd"]["profiles"].update_one(key, {"$set": {"lock": None}})
    assert await asyncio.wait_for(purge, 10) is True
    for name in ("profiles", "fields", "identities"):
        assert await client["cmd"][name].count_documents({"tenant_id": uid(tenant)}) == 0


def test_the_emulated_client_and_session_have_the_shape_of_the_real_ones() -> None:
    from pymongo import AsyncMongoClient
    from pymongo.asynchronous.client_session import AsyncClientSession
    from pymongo.asynchronous.database import AsyncDatabase

    from ccvault_mongo.emulation import EmulatedSession, _EmulatedAdmin

    pairs = [
        (AsyncMongoClient.start_session, EmulatedMongoClient.start_session),
        (AsyncMongoClient.close, EmulatedMongoClient.close),
        (AsyncMongoClient.drop_database, EmulatedMongoClient.drop_database),
        (AsyncDatabase.command, _EmulatedAdmin.command),
        (AsyncClientSession.with_transaction, EmulatedSession.with_transaction),
        (AsyncClientSession.end_session, EmulatedSession.end_session),
    ]
    for real, fake in pairs:
        assert inspect.iscoroutinefunction(real) == inspect.iscoroutinefunction(fake), real
    # the store's call binds to the real signature
    inspect.signature(AsyncClientSession.with_transaction).bind(
        None, lambda s: None, read_concern=None, write_concern=None
    )


@pytest.mark.parametrize("transactions", [False, True])
async def test_merge_sends_this_sequence(transactions: bool) -> None:
    async for store, client in _open(transactions):
        tenant = uuid4()
        source, target = await _profile(store, tenant), await _profile(store, tenant)
        loser = ProfileField(name="email", value="s", collected_at=NOW - timedelta(1))
        winner = ProfileField(name="email", value="t", collected_at=NOW)
        await store.update_field(tenant, source, loser)
        await store.update_field(tenant, target, winner)
        client.clear_commands()
        await store.merge_profiles(tenant, source, target)
        t, src, dst = uid(tenant), uid(source), uid(target)
        commands = list(client.commands)
        # the survivorship policies are read first, outside the merge's own step
        assert (commands[0].collection, commands[0].method) == ("definitions", "find")
        commands = commands[1:]
        if not transactions:
            first, second = commands[:2]
            order = sorted([source, target], key=lambda u: u.bytes)
            assert [first.args[0]["id"], second.args[0]["id"]] == [uid(u) for u in order]
            assert all("$or" in c.args[0] for c in (first, second))  # the two leases
            unlocks = commands[-2:]
            assert {c.args[0]["id"] for c in unlocks} == {src, dst}
            assert all(c.args[1] == {"$set": {"lock": None, "lock_until": None}} for c in unlocks)
            commands = commands[2:-2]
        assert all(c.in_transaction is transactions for c in commands)
        writes = [c for c in commands if c.method not in ("find", "find_one")]
        assert [(c.collection, c.method) for c in writes] == [
            ("profiles", "find_one_and_update"),  # mark the source
            ("profiles", "find_one_and_update"),  # check the target, continue its order
            ("identities", "update_one"),  # each moved identity with its planned primary flag
            ("consents", "update_many"),
            ("assets", "update_many"),
            ("fields", "update_one"),  # the loser superseded by the winner
            ("fields", "update_many"),  # every version moves
            ("merge_log", "update_one"),  # the merge record, in the same step
            ("profiles", "update_one"),  # the source soft-deleted
        ]
        # both sides are read after the marks and before the first write, never later
        first_write = commands.index(writes[2])
        assert commands[:2] == writes[:2]
        assert all(c.method in ("find", "find_one") for c in commands[2:first_write])
        assert commands[first_write:] == writes[2:]
        assert writes[2].args[1] == {"$set": {"profile_id": dst, "primary": False}}
        mark, keep = writes[0], writes[1]
        assert mark.args == (
            {"tenant_id": t, "id": src, "live": True, "merging_into": {"$in": [None, dst]}},
            {"$set": {"merging_into": dst}},
        )
        assert keep.args[0] == {"tenant_id": t, "id": dst, "live": True, "merging_into": None}
        assert list(keep.args[1]) == ["$max"]
        settle = writes[5]
        assert settle.args == (
            {"tenant_id": t, "id": uid(loser.id), "status": "active"},
            {
                "$set": {
                    "status": "superseded",
                    "superseded_by_id": uid(winner.id),
                    "superseded_at": dt(NOW),
                    "updated_at": dt(NOW),
                }
            },
        )
        assert writes[6].args == (
            {"tenant_id": t, "profile_id": src},
            {"$set": {"profile_id": dst}},
        )
        final = writes[8].args[1]
        assert final["$set"]["live"] is False and final["$set"]["merged_into"] == dst
        assert final["$unset"] == {"merging_into": ""}


# ---------------------------------------------------------------------------------------
# save: only a live profile is updated; a gone one is never brought back
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("transactions", [False, True])
async def test_save_updates_only_a_live_profile_and_revives_nothing(transactions: bool) -> None:
    async for store, client in _open(transactions):
        tenant = uuid4()
        profile = await store.get_or_create(tenant, Channel.SMS, "+15550201")
        client.clear_commands()
        await store.save(profile)
        t, p = uid(tenant), uid(profile.id)
        gone_checks = [
            c
            for c in client.commands
            if (c.collection, c.method) == ("profiles", "find_one")
            and c.args[0] == {"tenant_id": t, "id": p}
        ]
        # read once, before any write: on the transaction's snapshot (replica set) or under
        # the profile's write lease (standalone), which is taken first
        [upsert] = [
            c for c in client.commands if c.kwargs.get("upsert") and c.collection == "profiles"
        ]
        assert gone_checks[0].kwargs == {"projection": {"live": 1, "merging_into": 1}}
        assert [c.in_transaction for c in gone_checks] == [transactions]
        assert client.commands.index(gone_checks[0]) < client.commands.index(upsert)
        if not transactions:
            lease = client.commands[0]
            assert (lease.collection, lease.method) == ("profiles", "find_one_and_update")
            assert "lock" in lease.args[1]["$set"]
        assert upsert.method == "find_one_and_update"
        assert upsert.args[0] == {"tenant_id": t, "id": p, "live": True, "merging_into": None}
        assert list(upsert.args[1]) == ["$set", "$inc"]  # no $unset: nothing is revived
        assert not {"live", "deleted_at", "merging_into", "merged_into"} & set(
            upsert.args[1]["$set"]
        )
        assert upsert.in_transaction is transactions


async def test_a_profile_deleted_between_the_check_and_the_upsert_is_not_revived() -> None:
    """Standalone: the profile is soft-deleted right after save checked it. The upsert no
    longer matches it and its insert collides with it on ``(tenant_id, id)``: NotFoundError,
    and the profile stays deleted."""
    tenant = uuid4()

    class RacingClient(EmulatedMongoClient):
        armed = False

        def _record(
            self,
            collection: str,
            method: str,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            session: Any,
        ) -> None:
            super()._record(collection, method, args, kwargs, session)
            if self.armed and collection == "profiles" and kwargs.get("upsert"):
                self.armed = False
                self._sync["gone"]["profiles"].update_one(
                    {"tenant_id": uid(tenant), "id": args[0]["id"]},
                    {"$set": {"live": False, "deleted_at": dt(NOW)}},
                )

    client = RacingClient()
    settings = MongoSettings(database="gone", transactions="off")
    async with await migrated(FixedClockStore(settings, client=client)) as store:
        profile = await store.get_or_create(tenant, Channel.SMS, "+15550202")
        client.armed = True
        with pytest.raises(errors.NotFoundError):
            await store.save(profile)
        assert not client.armed
        docs = await client["gone"]["profiles"].find({"tenant_id": uid(tenant)}).to_list(None)
        assert len(docs) == 1 and docs[0]["live"] is False and docs[0]["lock"] is None
        assert await store.get_by_id(tenant, profile.id) is None


# ---------------------------------------------------------------------------------------
# mark_orphans: bounded pages
# ---------------------------------------------------------------------------------------


async def test_mark_orphans_sends_bounded_pages(
    standalone: tuple[MongoProfileStore, EmulatedMongoClient],
) -> None:
    store, client = standalone
    store.orphan_batch_size = 3
    tenant = uuid4()
    profile = await _profile(store, tenant)
    for i in range(7):  # each derived from its own source, never stored
        await store.update_field(
            tenant,
            profile,
            ProfileField(
                name=f"f{i}",
                value=i,
                source_item_id=uuid4(),
                source_item_type=SourceType.PROFILE_FIELD,
            ),
        )
    client.clear_commands()
    assert await store.mark_orphans(tenant) == 7
    t = uid(tenant)
    candidates = {
        "tenant_id": t,
        "status": {"$in": [s.value for s in ItemStatus]},
        "source_item_type": {"$in": ["profile_field", "profile_asset"]},
    }
    page_kwargs = {
        "projection": {"id": 1, "source_item_id": 1, "source_item_type": 1},
        "sort": [("id", 1)],
        "limit": 3,
    }
    # one keyset page per batch (orphan_batch_size caps it at 3): the page, which of its
    # sources exist, the page's orphans marked; the third page is short, so the same batch
    # goes on with the assets: one empty page
    one_page = [("fields", "find"), ("fields", "find"), ("fields", "update_many")]
    assert _calls(client) == one_page * 3 + [("assets", "find")]
    pages = [c for c in client.commands if c.kwargs.get("limit") is not None]
    assert [c.collection for c in pages] == ["fields"] * 3 + ["assets"]
    assert pages[0].args == (candidates,) and pages[0].kwargs == page_kwargs
    assert pages[3].args == (candidates,) and pages[3].kwargs == page_kwargs
    for page in pages[1:3]:  # keyset pagination: after the last id of the page before
        assert set(page.args[0]) == {*candidates, "id"}
        assert list(page.args[0]["id"]) == ["$gt"]
    sizes = [
        len(c.args[0]["id"]["$in"]) for c in client.commands if "$in" in c.args[0].get("id", {})
    ]
    assert sizes == [3, 3, 3, 3, 1, 1]  # per page: sources looked up, then its orphans
    for mark in (c for c in client.commands if c.method == "update_many"):
        assert mark.args[1] == {"$set": {"status": "orphaned", "updated_at": dt(NOW)}}


async def test_a_standalone_save_that_cannot_be_undone_is_a_partial_write() -> None:
    """Standalone: after save read its state and claimed its identities, another writer
    stores an asset under the id of the save's new asset. The save cannot undo what it
    wrote already (no transactions): PartialWriteError, never a ConflictError, and the
    profile's write lease is given back."""
    tenant = uuid4()
    other_profile = uuid4()
    stolen = ProfileAsset(
        name="scan", asset_type="document", storage_provider="s3", storage_path="s3://b/k"
    )

    class RacingClient(EmulatedMongoClient):
        armed = False

        def _record(
            self,
            collection: str,
            method: str,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            session: Any,
        ) -> None:
            super()._record(collection, method, args, kwargs, session)
            if self.armed and (collection, method) == ("consents", "delete_many"):
                self.armed = False
                self._sync["partial"]["assets"].insert_one(
                    {
                        "tenant_id": uid(tenant),
                        "profile_id": uid(other_profile),
                        "id": uid(stolen.id),
                        "name": "scan",
                        "status": ItemStatus.ACTIVE.value,
                        "seq": 1,
                    }
                )

    client = RacingClient()
    settings = MongoSettings(database="partial", transactions="off")
    async with await migrated(FixedClockStore(settings, client=client)) as store:
        profile = await store.get_or_create(tenant, Channel.SMS, "+15550203")
        profile.assets = [stolen]
        client.armed = True
        with pytest.raises(errors.PartialWriteError) as raised:
            await store.save(profile)
        assert not isinstance(raised.value, errors.ConflictError)
        assert "+15550203" not in str(raised.value)
        assert not client.armed
        docs = await client["partial"]["profiles"].find({"tenant_id": uid(tenant)}).to_list(None)
        assert len(docs) == 1 and docs[0]["lock"] is None


async def test_a_standalone_field_write_that_cannot_be_activated_is_a_partial_write() -> None:
    """Standalone: another writer makes its version of the name ACTIVE every time this one
    tries to. The version stays stored (pending, finished later by
    recover_interrupted_writes), so the error is PartialWriteError, never a ConflictError."""
    tenant = uuid4()

    class RacingClient(EmulatedMongoClient):
        def _record(
            self,
            collection: str,
            method: str,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            session: Any,
        ) -> None:
            super()._record(collection, method, args, kwargs, session)
            update = args[1] if len(args) > 1 else {}
            if (collection, method) == ("fields", "update_one") and "$unset" in update:
                pending = self._sync["racing"]["fields"].find_one({"id": args[0]["id"]})
                self._sync["racing"]["fields"].insert_one(
                    {
                        "tenant_id": pending["tenant_id"],
                        "profile_id": pending["profile_id"],
                        "name": pending["name"],
                        "id": uid(uuid4()),
                        "status": ItemStatus.ACTIVE.value,
                        "seq": 0,
                    }
                )

    client = RacingClient()
    settings = MongoSettings(database="racing", transactions="off", max_write_retries=1)
    async with await migrated(FixedClockStore(settings, client=client)) as store:
        profile = await store.get_or_create(tenant, Channel.SMS, "+15550204")
        field = ProfileField(name="email", value="a@example.com")
        with pytest.raises(errors.PartialWriteError) as raised:
            await store.update_field(tenant, profile.id, field)
        assert not isinstance(raised.value, errors.ConflictError)
        stored = await client["racing"]["fields"].find_one({"id": uid(field.id)})
        assert stored is not None and stored["status"] == PENDING
