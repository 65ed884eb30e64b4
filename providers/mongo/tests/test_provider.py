"""Settings, plugin registration, connection errors and the lossless codec."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from ccvault import errors
from ccvault.models import Channel, ProfileField
from ccvault.registry import create_store, installed_providers, load_provider
from ccvault.settings import load_settings
from ccvault.store import StoreRules
from ccvault_mongo import MongoProfileStore, MongoSettings
from ccvault_mongo.codec import JSON_SUFFIX, dt, is_bson_safe, pack_json
from ccvault_mongo.emulation import EmulatedMongoClient

from .conftest import MONGO_URL, migrated, open_mongo_store

REPO = Path(__file__).resolve().parents[3]

# ---------------------------------------------------------------------------------------
# settings and plugin
# ---------------------------------------------------------------------------------------


def test_the_entry_point_is_installed_and_declares_the_provider() -> None:
    assert installed_providers()["mongo"].distribution == "ccvault-mongo"
    spec = load_provider("mongo")
    assert spec.name == "mongo" and spec.settings_model is MongoSettings
    store = spec.create_store(MongoSettings(database="x"), StoreRules(max_derivation_chain_depth=3))
    assert isinstance(store, MongoProfileStore)
    assert store.settings.database == "x" and store.rules.max_derivation_chain_depth == 3


def test_default_toml_configures_the_provider() -> None:
    settings = load_settings(REPO / "config" / "default.toml", store_provider="mongo")
    store = create_store(settings)
    assert isinstance(store, MongoProfileStore)
    assert store.settings.uri.get_secret_value() == "mongodb://127.0.0.1:27017"
    assert store.settings.database == "ccvault"
    assert store.settings.transactions == "auto"


def test_a_bad_option_names_the_key() -> None:
    settings = load_settings(
        store_provider="mongo", providers={"mongo": {"transactions": "sometimes"}}
    )
    with pytest.raises(errors.ConfigurationError, match=r"providers\.mongo\.transactions"):
        create_store(settings)


def test_timeouts_reach_the_driver() -> None:
    options = MongoSettings(server_selection_timeout_ms=1234, socket_timeout_ms=99).client_options()
    assert options["serverSelectionTimeoutMS"] == 1234
    assert options["socketTimeoutMS"] == 99
    assert "socketTimeoutMS" not in MongoSettings().client_options()


@pytest.mark.parametrize(
    ("hello", "supported"),
    [
        ({"isWritablePrimary": True, "logicalSessionTimeoutMinutes": 30}, False),
        ({"setName": "rs0", "logicalSessionTimeoutMinutes": 30}, True),
        ({"msg": "isdbgrid", "logicalSessionTimeoutMinutes": 30}, True),
        ({"setName": "rs0"}, False),  # no sessions, no transactions
    ],
)
def test_transaction_support_is_read_from_hello(hello: dict[str, Any], supported: bool) -> None:
    assert MongoProfileStore.server_supports_transactions(hello) is supported


async def test_transactions_on_against_a_standalone_fails_at_setup() -> None:
    store = MongoProfileStore(MongoSettings(transactions="on"), client=EmulatedMongoClient())
    with pytest.raises(errors.ConfigurationError, match="replica set"):
        await store.setup()


async def test_auto_uses_transactions_only_where_the_server_has_them() -> None:
    for transactions in (False, True):
        client = EmulatedMongoClient(transactions=transactions)
        async with await migrated(MongoProfileStore(MongoSettings(), client=client)) as store:
            assert store.transactions_enabled is transactions
        assert client.closed is False  # a client handed in is the caller's to close


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_server_is_provider_unavailable() -> None:
    """The real driver, no emulation: nothing listens on the port."""
    settings = MongoSettings(
        uri=f"mongodb://127.0.0.1:{_closed_port()}/?directConnection=true",
        server_selection_timeout_ms=300,
        connect_timeout_ms=300,
    )
    store = MongoProfileStore(settings)
    with pytest.raises(errors.ProviderUnavailableError, match="unreachable"):
        await store.setup()
    await store.aclose()
    await store.aclose()  # idempotent


async def test_a_store_that_is_not_set_up_says_so() -> None:
    store = MongoProfileStore(client=EmulatedMongoClient())
    with pytest.raises(errors.ConfigurationError, match="not set up"):
        await store.get_or_create(uuid4(), Channel.WEB, "x")


# ---------------------------------------------------------------------------------------
# the codec: BSON dates hold milliseconds, BSON integers 64 bits; neither may lose data
# ---------------------------------------------------------------------------------------


def test_timestamps_are_fixed_width_so_string_order_is_time_order() -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    moments = [base + timedelta(microseconds=n) for n in (0, 1, 999, 1000, 10**6)]
    moments.append(datetime(999, 1, 1, tzinfo=UTC))
    encoded = [dt(m) for m in moments]
    assert len({len(e) for e in encoded}) == 1
    assert sorted(encoded) == [dt(m) for m in sorted(moments)]
    assert dt(base) == "2026-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    "value",
    [2**63, -(2**63) - 1, {"a.b": 1}, {"$set": 1}, {"nul\x00key": 1}, [1, {"x": {"y.z": 2}}]],
)
def test_values_bson_cannot_hold_go_to_json_text(value: Any) -> None:
    assert not is_bson_safe(value)
    document = {"value": value}
    pack_json(document, "value")
    assert document["value"] is None and "value" + JSON_SUFFIX in document


@pytest.mark.parametrize(
    "value",
    [
        2**63 - 1,
        -(2**63),
        2**200,
        1.5,
        True,
        None,
        "nul\x00inside",
        {"a.b": [1, 2.0, {"$x": None}]},
        {"nested": {"deep": ["list", 3]}},
        [],
        {},
    ],
)
async def test_json_values_round_trip_exactly(value: Any) -> None:
    async for store in open_mongo_store():
        tenant = uuid4()
        profile = await store.get_or_create(tenant, Channel.WEB, "codec")
        collected = datetime(2026, 1, 1, 0, 0, 0, 123457, tzinfo=UTC)  # sub-millisecond
        field = ProfileField(
            name="v", value=value, source_metadata={"k.dot": value}, collected_at=collected
        )
        await store.update_field(tenant, profile.id, field)
        stored = await store.get_field(tenant, profile.id, "v")
        assert stored is not None
        assert stored.value == value and type(stored.value) is type(value)
        assert stored.source_metadata == {"k.dot": value}
        assert stored.collected_at == collected


async def test_the_test_target_is_the_one_announced() -> None:
    async for store in open_mongo_store():
        if MONGO_URL:
            assert not isinstance(store._client, EmulatedMongoClient)
        else:
            assert isinstance(store._client, EmulatedMongoClient)


def test_what_the_driver_decodes_is_what_the_emulation_returns() -> None:
    """A real server's reply goes through ``bson.decode`` (64-bit integers come back as
    ``Int64``); decoding normalises it, so both targets hand pydantic the same values."""
    import bson

    from ccvault_mongo.codec import decode, encode

    original = {"id": uuid4(), "n": 2**40, "small": 7, "values": [2**62, {"x": -(2**50)}]}
    wire = bson.decode(bson.encode(encode(original)))
    assert type(wire["n"]).__name__ == "Int64"
    assert decode(wire) == original
    assert type(decode(wire)["n"]) is int
    assert type(decode(wire)["values"][1]["x"]) is int


async def test_a_store_can_be_reopened_and_keeps_the_client_it_was_given() -> None:
    client = EmulatedMongoClient()
    store = await migrated(MongoProfileStore(MongoSettings(database="reopen"), client=client))
    tenant = uuid4()
    async with store:
        profile = await store.get_or_create(tenant, Channel.WEB, "again")
    async with store:
        assert store._client is client
        assert await store.get_by_id(tenant, profile.id) is not None
    assert client.closed is False
