"""Migrations as an explicit step on MongoDB (through the in-process emulation: mongomock
behind PyMongo's async API; no MongoDB server on this machine).

``setup()`` only reads the ``ccvault_schema_version`` collection; ``migrate()`` creates the
indexes and records the version; a newer version is refused by both.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from ccvault import errors
from ccvault_mongo import MongoProfileStore, MongoSettings
from ccvault_mongo.emulation import EmulatedMongoClient
from ccvault_mongo.schema import COLLECTIONS, LATEST_VERSION, MIGRATIONS, VERSION_COLLECTION

APPLIED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _collections(client: EmulatedMongoClient, database: str) -> list[str]:
    return sorted(client._sync[database].list_collection_names())


async def test_start_on_an_empty_database_names_migrate_and_creates_nothing() -> None:
    client = EmulatedMongoClient()
    store = MongoProfileStore(MongoSettings(database="empty"), client=client)
    with pytest.raises(errors.SchemaNotReadyError) as raised:
        await store.setup()
    assert "`ccvault migrate`" in str(raised.value)
    assert 'MongoDB database "empty"' in str(raised.value)
    assert isinstance(raised.value, errors.ConfigurationError)
    assert _collections(client, "empty") == []
    assert not [c for c in client.commands if c.method in ("create_indexes", "update_one")]


async def test_status_dry_run_and_migrate() -> None:
    client = EmulatedMongoClient()
    store = MongoProfileStore(
        MongoSettings(database="steps", collection_prefix="v1_"), client=client
    )
    status = await store.schema_status()
    assert (status.current, status.latest) == (0, LATEST_VERSION)
    assert [s.version for s in status.pending] == [m.version for m in MIGRATIONS]
    dry = await store.migrate(dry_run=True)
    assert dry.dry_run and dry.applied == status.pending
    commands = dry.applied[0].statements
    assert len(commands) == len(COLLECTIONS)
    assert commands[0].startswith("db.v1_profiles.createIndexes(")
    assert _collections(client, "steps") == []  # the dry run created nothing

    report = await store.migrate()
    assert [s.version for s in report.applied] == [m.version for m in MIGRATIONS]
    assert report.status.up_to_date
    assert set(_collections(client, "steps")) >= {f"v1_{n}" for n in COLLECTIONS}
    again = await store.migrate()
    assert again.applied == () and again.status.up_to_date
    async with store:
        assert (await store.schema_status()).up_to_date


async def test_concurrent_migrators_record_each_step_once() -> None:
    client = EmulatedMongoClient(seed=7, max_yields=5)
    settings = MongoSettings(database="race")
    reports = await asyncio.gather(
        *(MongoProfileStore(settings, client=client).migrate() for _ in range(5))
    )
    applied = sorted(tuple(s.version for s in r.applied) for r in reports)
    assert applied == [(), (), (), (), tuple(m.version for m in MIGRATIONS)]
    versions = client._sync["race"][VERSION_COLLECTION].count_documents({})
    assert versions == len(MIGRATIONS)


async def test_a_newer_schema_is_refused_by_start_and_migrate() -> None:
    client = EmulatedMongoClient()
    settings = MongoSettings(database="future")
    await MongoProfileStore(settings, client=client).migrate()
    future = LATEST_VERSION + 3
    client._sync["future"][VERSION_COLLECTION].insert_one(
        {"_id": future, "description": "from the future", "applied_at": APPLIED_AT}
    )
    newer = rf"version {future}, newer .*\(latest {LATEST_VERSION}\)"
    with pytest.raises(errors.SchemaVersionError, match=newer):
        await MongoProfileStore(settings, client=client).setup()
    for dry_run in (True, False):
        with pytest.raises(errors.SchemaVersionError, match=newer):
            await MongoProfileStore(settings, client=client).migrate(dry_run=dry_run)


async def test_migrate_on_start_creates_the_indexes_at_setup() -> None:
    client = EmulatedMongoClient()
    settings = MongoSettings(database="auto", migrate_on_start=True)
    async with MongoProfileStore(settings, client=client) as store:
        assert (await store.schema_status()).up_to_date
    assert [c.collection for c in client.commands if c.method == "create_indexes"] == list(
        COLLECTIONS
    )
