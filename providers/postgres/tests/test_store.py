"""Focused tests of the PostgreSQL provider beyond the shared suite: settings, migrations,
round trips, concurrency across connections and processes, timeouts, hostile input."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import uuid
from typing import Any

import asyncpg
import pytest

from ccvault import errors
from ccvault.models import (
    Channel,
    ItemStatus,
    ProfileAsset,
    ProfileField,
    ProfileFieldSource,
    SourceType,
)
from ccvault.registry import create_store, load_provider
from ccvault.settings import load_settings
from ccvault.store import StoreRules
from ccvault_postgres import PostgresProfileStore, PostgresSettings
from ccvault_postgres.schema import MIGRATIONS
from ccvault_postgres.testing import chain_problems

pytestmark = pytest.mark.timeout(120)

# ---------------------------------------------------------------------------------------
# settings and registration
# ---------------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    options = PostgresSettings()
    assert options.dsn.get_secret_value() == "postgresql://127.0.0.1:5432/postgres"
    assert options.db_schema == "public"
    assert options.min_pool_size <= options.max_pool_size


def test_dsn_from_environment_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_PG", "postgresql://db.example:6543/vault")
    dsn = PostgresSettings(dsn="${VAULT_PG}").dsn.get_secret_value()
    assert dsn == "postgresql://db.example:6543/vault"


def test_dsn_from_ccvault_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCVAULT_PROVIDERS__POSTGRES__DSN", "postgresql://db.example:6543/vault")
    settings = load_settings(store_provider="postgres")
    store = create_store(settings)
    assert isinstance(store, PostgresProfileStore)
    assert store.settings.dsn.get_secret_value() == "postgresql://db.example:6543/vault"


@pytest.mark.parametrize(
    "options",
    [
        {"schema": 'x"; DROP SCHEMA public; --'},
        {"schema": "Upper"},
        {"dsn": "mysql://x"},
        {"dsn": "${CCVAULT_SURELY_UNSET_VARIABLE}"},
        {"min_pool_size": 5, "max_pool_size": 2},
        {"statement_timeout_seconds": -1},
        {"no_such_key": 1},
    ],
)
def test_bad_options_are_refused_at_load(options: dict[str, Any]) -> None:
    settings = load_settings(store_provider="postgres", providers={"postgres": options})
    with pytest.raises(errors.ConfigurationError, match=r"providers\.postgres"):
        create_store(settings)


def test_provider_is_registered_under_its_name() -> None:
    spec = load_provider("postgres")
    assert spec.name == "postgres"
    assert spec.distribution == "ccvault-postgres"
    assert spec.settings_model is PostgresSettings


async def test_unreachable_server_is_provider_unavailable() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PostgresProfileStore(
        PostgresSettings(dsn=f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout_seconds=2)
    )
    with pytest.raises(errors.ProviderUnavailableError):
        await store.setup()
    with pytest.raises(errors.ProviderUnavailableError):  # not open: a clear error too
        await store.get_by_id(uuid.uuid4(), uuid.uuid4())


# ---------------------------------------------------------------------------------------
# schema and migrations
# ---------------------------------------------------------------------------------------


async def test_every_key_starts_with_tenant_id(store: PostgresProfileStore) -> None:
    async with store.connection() as conn:
        rows = await conn.fetch(
            """
            SELECT c.conname, c.contype::text AS contype, a.attname AS first_column
            FROM pg_constraint c
            JOIN pg_class t ON t.oid = c.conrelid
            JOIN pg_namespace n ON n.oid = t.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
            WHERE n.nspname = current_schema() AND c.contype IN ('p', 'u', 'f')
              AND t.relname <> 'ccvault_schema_version'
            """
        )
        unique_indexes = await conn.fetch(
            """
            SELECT i.indexrelid::regclass::text AS name, a.attname AS first_column
            FROM pg_index i
            JOIN pg_class t ON t.oid = i.indrelid
            JOIN pg_namespace n ON n.oid = t.relnamespace
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE n.nspname = current_schema() AND i.indisunique
              AND t.relname <> 'ccvault_schema_version'
            """
        )
    assert {r["contype"] for r in rows} == {"p", "u", "f"}
    assert all(r["first_column"] == "tenant_id" for r in [*rows, *unique_indexes]), rows
    names = {r["name"] for r in unique_indexes}
    assert "profile_fields_one_active" in names


async def test_setup_is_idempotent_and_records_versions(make_store: Any) -> None:
    first = await make_store(schema="idempotent_setup")
    assert first.applied_migrations == [m.version for m in MIGRATIONS]
    second = await make_store(schema="idempotent_setup")
    assert second.applied_migrations == []
    await second.setup()  # again on an open store: a no-op
    async with second.connection() as conn:
        versions = await conn.fetch("SELECT version FROM ccvault_schema_version")
    assert sorted(r["version"] for r in versions) == [m.version for m in MIGRATIONS]


async def test_newer_schema_is_refused(make_store: Any, pg_dsn: str) -> None:
    store = await make_store(schema="from_the_future")
    async with store.connection() as conn:
        await conn.execute(
            "INSERT INTO ccvault_schema_version (version, description) VALUES (9999, 'x')"
        )
    newer = PostgresProfileStore(PostgresSettings(dsn=pg_dsn, db_schema="from_the_future"))
    with pytest.raises(errors.SchemaVersionError, match="9999"):
        await newer.setup()


_READY_GO = """
import asyncio, json, sys
from ccvault_postgres import PostgresProfileStore, PostgresSettings
{imports}

async def main():
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
{body}

asyncio.run(main())
"""


async def _run_processes(script: str, args_list: list[list[str]]) -> list[str]:
    """Start one process per args, wait until all are ready, release them at once, and
    return each one's last stdout line."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for args in args_list
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            _, err = await proc.communicate()
            raise AssertionError(f"worker failed to start: {line!r} {err.decode()}")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    results = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()
        results.append(out.decode().strip().splitlines()[-1])
    return results


_SETUP_BODY = """
    store = PostgresProfileStore(
        PostgresSettings(dsn=sys.argv[1], db_schema=sys.argv[2], min_pool_size=1, max_pool_size=1)
    )
    await store.migrate()
    print(json.dumps(store.applied_migrations))
    await store.aclose()
"""


async def test_ten_processes_migrating_at_once_migrate_exactly_once(
    pg_dsn: str, make_store: Any
) -> None:
    schema = f"race_{uuid.uuid4().hex[:12]}"
    script = _READY_GO.format(imports="", body=_SETUP_BODY)
    results = await _run_processes(script, [[pg_dsn, schema] for _ in range(10)])
    applied = [json.loads(line) for line in results]
    # exactly one process applied the migrations; the nine others found them done
    assert sorted(map(tuple, applied)) == [()] * 9 + [tuple(m.version for m in MIGRATIONS)]
    store = await make_store(schema=schema)
    async with store.connection() as conn:
        rows = await conn.fetch("SELECT version, applied_by_pid FROM ccvault_schema_version")
    assert sorted(r["version"] for r in rows) == [m.version for m in MIGRATIONS]
    assert len({r["applied_by_pid"] for r in rows}) == 1


async def test_ten_pools_in_one_process_migrate_exactly_once(make_store: Any) -> None:
    schema = f"race_{uuid.uuid4().hex[:12]}"
    stores = await asyncio.gather(*(make_store(schema=schema) for _ in range(10)))
    applied = [s.applied_migrations for s in stores]
    assert sum(1 for a in applied if a) == 1


# ---------------------------------------------------------------------------------------
# round trips: one statement per whole-profile read and per field write
# ---------------------------------------------------------------------------------------


async def test_one_statement_per_read_and_per_update_field(make_store: Any) -> None:
    store: PostgresProfileStore = await make_store(min_pool_size=1, max_pool_size=1)
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "round-trips")
    for i in range(30):
        for version in range(3):
            await store.update_field(tenant, profile.id, ProfileField(name=f"f{i}", value=version))
    await store.add_asset(
        tenant,
        profile.id,
        ProfileAsset(name="doc", asset_type="pdf", storage_provider="s3", storage_path="a/b"),
    )
    # each statement once first: preparing it (and asyncpg's one-time type introspection)
    # happens once per connection, not per call
    await store.get_by_id(tenant, profile.id)
    await store.get_by_id(tenant, profile.id, include_history=True)
    await store.get_by_channel_identity(tenant, Channel.WEB, "round-trips")
    await store.get_by_customer_id(tenant, profile.customer_id)
    await store.get_derivation_chain(tenant, uuid.uuid4(), "profile_field")
    await store.expire_stale_fields(tenant)
    statements: list[str] = []
    async with store.connection() as conn:  # the pool's only connection
        conn.add_query_logger(lambda record: statements.append(record.query))

    statements.clear()
    found = await store.get_by_id(tenant, profile.id)
    assert found is not None and len(found.fields) == 30 and len(found.assets) == 1
    assert len(statements) == 1

    statements.clear()
    found = await store.get_by_id(tenant, profile.id, include_history=True)
    assert found is not None and sum(map(len, found.field_history.values())) == 90
    assert len(statements) == 1

    statements.clear()
    await store.get_by_channel_identity(tenant, Channel.WEB, "round-trips")
    await store.get_by_customer_id(tenant, profile.customer_id)
    assert len(statements) == 2

    statements.clear()
    await store.update_field(tenant, profile.id, ProfileField(name="f0", value="new"))
    assert len(statements) == 1

    statements.clear()
    await store.get_derivation_chain(tenant, found.fields["f1"].id, "profile_field")
    await store.expire_stale_fields(tenant)
    assert len(statements) == 2


# ---------------------------------------------------------------------------------------
# concurrency: separate connections and separate processes writing one field
# ---------------------------------------------------------------------------------------

_WRITER_BODY = """
    from ccvault.models import ProfileField
    import uuid
    store = PostgresProfileStore(
        PostgresSettings(dsn=sys.argv[1], db_schema=sys.argv[2], min_pool_size=4, max_pool_size=4)
    )
    await store.setup()
    tenant, profile = uuid.UUID(sys.argv[3]), uuid.UUID(sys.argv[4])

    async def writer(n):
        ids = []
        for i in range(n):
            field = ProfileField(name="counter", value=f"{sys.argv[5]}-{i}")
            ids.append(str(await store.update_field(tenant, profile, field)))
        return ids

    done = await asyncio.gather(*(writer(int(sys.argv[6])) for _ in range(4)))
    await store.aclose()
    print(json.dumps([i for ids in done for i in ids]))
"""


async def test_concurrent_writers_across_connections_and_processes(
    pg_dsn: str, make_store: Any
) -> None:
    store: PostgresProfileStore = await make_store(min_pool_size=8, max_pool_size=8)
    schema = store.settings.db_schema
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.SMS, "+15550001")
    per_writer = 10

    async def writer(tag: int) -> list[uuid.UUID]:
        return [
            await store.update_field(
                tenant, profile.id, ProfileField(name="counter", value=f"local{tag}-{i}")
            )
            for i in range(per_writer)
        ]

    script = _READY_GO.format(imports="", body=_WRITER_BODY)
    args = [
        [pg_dsn, schema, str(tenant), str(profile.id), f"proc{p}", str(per_writer)]
        for p in range(3)
    ]
    processes = asyncio.ensure_future(_run_processes(script, args))
    local = await asyncio.gather(*(writer(w) for w in range(8)))
    remote = [json.loads(line) for line in await processes]

    written = {i for ids in local for i in ids} | {uuid.UUID(i) for ids in remote for i in ids}
    assert len(written) == 8 * per_writer + 3 * 4 * per_writer
    history = await store.get_field_history(tenant, profile.id, "counter")
    assert {v.id for v in history} == written
    assert chain_problems(history) == []
    assert [v.status for v in history].count(ItemStatus.ACTIVE) == 1


async def test_supersede_false_race_has_one_winner(store: PostgresProfileStore) -> None:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "race")
    results = await asyncio.gather(
        *(
            store.update_field(
                tenant, profile.id, ProfileField(name="once", value=i), supersede_existing=False
            )
            for i in range(10)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, uuid.UUID)]
    assert len(winners) == 1
    assert all(isinstance(r, errors.ActiveFieldConflictError) for r in results if r not in winners)
    assert len(await store.get_field_history(tenant, profile.id, "once")) == 1


# ---------------------------------------------------------------------------------------
# timeouts and locks
# ---------------------------------------------------------------------------------------


async def test_statement_timeout_is_honoured(make_store: Any, pg_dsn: str) -> None:
    store: PostgresProfileStore = await make_store(statement_timeout_seconds=0.2)
    async with store.connection() as conn:
        assert await conn.fetchval("SHOW statement_timeout") == "200ms"
    with pytest.raises(errors.ProviderUnavailableError, match="timed out"):
        async with store.connection() as conn:
            await conn.execute("SELECT pg_sleep(30)")

    # a write stuck behind another session's lock gives up, and writes nothing
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "locked")
    first = await store.update_field(tenant, profile.id, ProfileField(name="x", value=1))
    blocker = await asyncpg.connect(
        pg_dsn, server_settings={"search_path": store.settings.db_schema}
    )
    try:
        async with blocker.transaction():
            await blocker.execute(
                "SELECT 1 FROM profile_fields WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
                tenant,
                first,
            )
            with pytest.raises(errors.ProviderUnavailableError):
                await store.update_field(tenant, profile.id, ProfileField(name="x", value=2))
    finally:
        await blocker.close()
    history = await store.get_field_history(tenant, profile.id, "x")
    assert [(v.value, v.status) for v in history] == [(1, ItemStatus.ACTIVE)]


# ---------------------------------------------------------------------------------------
# hostile input: SQL injection is impossible, odd values round-trip or are refused cleanly
# ---------------------------------------------------------------------------------------

HOSTILE = [
    "'; DROP TABLE profile_fields; --",
    'x" OR 1=1 --',
    "$1; DELETE FROM customer_profiles",
    "\\'; SELECT pg_sleep(10); --",
    "Robert'); DROP TABLE consents;--",
    "ünïcødé ✓ 𝄞 中文 עברית",
    "%s %(x)s {0} ${HOME}",
]


@pytest.mark.parametrize("hostile", HOSTILE)
async def test_hostile_strings_are_stored_verbatim(
    store: PostgresProfileStore, hostile: str
) -> None:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.EMAIL, hostile)
    value = {hostile: [hostile, {"k": hostile}], "n": 1}
    field = ProfileField(
        name="note",
        value=value,
        source_metadata={hostile: hostile},
        verification_method=hostile,
        verified_by=hostile,
        value_type=hostile,
    )
    await store.update_field(tenant, profile.id, field)
    asset = ProfileAsset(
        name="doc",
        asset_type=hostile,
        storage_provider=hostile,
        storage_path=hostile,
        derived_from_tool=hostile,
        verification_result={hostile: hostile},
    )
    await store.add_asset(tenant, profile.id, asset)

    found = await store.get_by_channel_identity(tenant, Channel.EMAIL, hostile)
    assert found is not None and found.id == profile.id
    stored = found.fields["note"]
    assert (stored.value, stored.source_metadata, stored.verified_by) == (
        value,
        {hostile: hostile},
        hostile,
    )
    assert found.assets[0].storage_path == hostile
    assert found.assets[0].verification_result == {hostile: hostile}
    async with store.connection() as conn:  # every table is still there
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    assert tables == 10  # the version table, 7 data tables, the merge log, worker claims


@pytest.mark.parametrize("name", ["x'; DROP TABLE profile_fields; --", "Name", "a b", "ä", ""])
async def test_hostile_field_names_are_refused(store: PostgresProfileStore, name: str) -> None:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "names")
    with pytest.raises(errors.ValidationError):
        await store.get_field(tenant, profile.id, name)
    with pytest.raises(errors.ValidationError):
        await store.get_field_history(tenant, profile.id, name)


@pytest.mark.parametrize("value", ["a\x00b", {"k": "\x00"}, {"\x00": 1}, ["ok", "nul\x00"]])
async def test_nul_characters_are_refused_before_anything_is_written(
    store: PostgresProfileStore, value: Any
) -> None:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "nul")
    with pytest.raises(errors.ValidationError):
        await store.update_field(tenant, profile.id, ProfileField(name="v", value=value))
    assert await store.get_field_history(tenant, profile.id, "v") == []
    with pytest.raises(errors.ValidationError):
        await store.update_field(
            tenant, profile.id, ProfileField(name="v", value=1, verified_by="a\x00")
        )
    with pytest.raises(errors.ValidationError):
        await store.get_or_create(tenant, Channel.WEB, "nul\x00")


async def test_numbers_round_trip_exactly_with_their_type(store: PostgresProfileStore) -> None:
    """jsonb normalises numbers; the codec makes sure nothing comes back changed."""
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "numbers")
    value = {
        "big": 2**70,
        "neg": -(2**65),
        "list": [10**30, 1.5, 1e16, 1.2345678901234567e300, 5e-324, 1.7976931348623157e308],
        "small": 7,
        "text": "1e+16",
    }
    await store.update_field(tenant, profile.id, ProfileField(name="n", value=value))
    stored = await store.get_field(tenant, profile.id, "n")
    assert stored is not None and stored.value == value
    numbers: list[Any] = value["list"]  # type: ignore[assignment]
    assert [type(x) for x in stored.value["list"]] == [type(x) for x in numbers]
    assert isinstance(stored.value["big"], int)
    # a whole-profile read parses every value of the profile in one call
    for history in (False, True):
        found = await store.get_by_id(tenant, profile.id, include_history=history)
        assert found is not None and typed(found.fields["n"].value) == typed(value)


def typed(value: Any) -> Any:
    """``value`` with the type of every item beside it (``==`` finds 1e16 equal to 10**16)."""
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    return (type(value), value)


@pytest.mark.parametrize(
    "text",
    [
        b'["x",123456789012345678901]',  # a huge integer after a string
        b'[{"k":"a\\"b"},123456789012345678901]',  # ... with an escaped quote before it
        b'["a\\"",123456789012345678901,"b"]',  # ... an escaped quote that shifts the pieces
        b'["a\\\\",123456789012345678901,"b"]',  # ... after a string ending in a backslash
        b'["1234567890123456789012345",1]',  # a long run of digits inside a string only
        b'[1234567890,"x",1234567890123]',  # runs either side of a string: not one run
        b'[[-36893488147419103232],[{"q":"\\u0022","n":1e5}]]',
    ],
)
def test_profile_json_parses_exactly(text: bytes) -> None:
    """The huge-integer check of a profile read's JSON (``_loads``): whatever the strings
    hold, every number comes back exactly, with its type."""
    from ccvault_postgres.store import _loads

    assert typed(_loads(text)) == typed(json.loads(text))


async def test_unencodable_text_is_refused_cleanly(store: PostgresProfileStore) -> None:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "surrogates")
    with pytest.raises(errors.ValidationError):
        await store.update_field(tenant, profile.id, ProfileField(name="s", value="\ud800"))
    assert await store.get_field_history(tenant, profile.id, "s") == []


# ---------------------------------------------------------------------------------------
# lineage: one recursive query with a depth limit and a cycle guard
# ---------------------------------------------------------------------------------------


async def test_lineage_cycle_and_depth_limit(make_store: Any) -> None:
    store: PostgresProfileStore = await make_store(rules=StoreRules(max_derivation_chain_depth=5))
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "lineage")
    ids = [uuid.uuid4() for _ in range(12)]
    # a chain f0 <- f1 <- ... <- f11, then close a cycle f0 -> f11
    for i, item_id in enumerate(ids):
        await store.update_field(
            tenant,
            profile.id,
            ProfileField(
                id=item_id,
                name=f"f{i}",
                value=i,
                source_item_id=ids[i - 1] if i else ids[-1],
                source_item_type=SourceType.PROFILE_FIELD,
            ),
        )
    chain = await store.get_derivation_chain(tenant, ids[11], "profile_field")
    assert [entry["id"] for entry in chain] == ids[7:12]  # nearest five, root first

    deep = await make_store(
        schema=store.settings.db_schema, rules=StoreRules(max_derivation_chain_depth=100)
    )
    cycle = await deep.get_derivation_chain(tenant, ids[11], "profile_field")
    assert [entry["id"] for entry in cycle] == ids  # every item once, the cycle cut


async def test_trusted_rows_equal_validated_models(store: PostgresProfileStore) -> None:
    """Rows are read back without re-validation; they must equal validated models."""
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "trusted")
    source = ProfileField(name="src", value=[1, "x", {"y": None}], verified=True)
    await store.update_field(tenant, profile.id, source)
    field = ProfileField(
        name="derived",
        value={"nested": [1.5, True, None]},
        source_item_id=source.id,
        source_item_type=SourceType.PROFILE_FIELD,
        source_metadata={"why": "test"},
        confidence=0.25,
        verified_at=source.collected_at,
    )
    await store.update_field(tenant, profile.id, field)
    asset = ProfileAsset(
        name="scan", asset_type="image", storage_provider="s3", storage_path="k",
        checksum="a" * 64, analysis_field_ids=[field.id], verification_result={"ok": True},
        source_item_id=field.id, source_item_type=SourceType.PROFILE_FIELD,
    )  # fmt: skip
    await store.add_asset(tenant, profile.id, asset)
    found = await store.get_by_id(tenant, profile.id, include_history=True)
    assert found is not None
    for item in [*found.fields.values(), *found.assets]:
        again = type(item).model_validate(item.model_dump())
        assert again == item
        assert item.model_dump() == again.model_dump()
        assert item.model_fields_set == again.model_fields_set
    stored = found.fields["derived"]
    assert stored.model_dump(exclude={"updated_at"}) == field.model_dump(exclude={"updated_at"})
    assert found.assets[0].model_dump() == asset.model_dump()
    copy = stored.model_copy(update={"status": ItemStatus.EXPIRED})
    assert copy.status is ItemStatus.EXPIRED and stored.status is ItemStatus.ACTIVE


@pytest.mark.parametrize("include_history", [False, True])
async def test_trusted_versions_share_no_mutable_value(
    store: PostgresProfileStore, include_history: bool
) -> None:
    """Versions of one read are built from one template of the columns that are the same
    in every row: each still equals what was written, and none shares a value it could
    change in place (its JSON values, its own attributes) with another. (They share one
    fields-set on purpose: it names every field, and pydantic only adds names to it.)"""
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "template")
    written = [
        ProfileField(name="a", value=[1], source_metadata={"k": 1}),
        ProfileField(name="b", value=[1], source_metadata={"k": 1}),
        ProfileField(name="c", value="x", source=ProfileFieldSource.TOOL_RESULT, verified=True),
    ]
    for item in written:
        await store.update_field(tenant, profile.id, item)
    found = await store.get_by_id(tenant, profile.id, include_history=include_history)
    assert found is not None
    for item in written:
        stored = found.fields[item.name]
        assert stored.model_dump(exclude={"updated_at"}) == item.model_dump(exclude={"updated_at"})
        again = ProfileField.model_validate(stored.model_dump())
        assert again == stored and again.model_fields_set == stored.model_fields_set
    a, b = found.fields["a"], found.fields["b"]
    assert isinstance(a.value, list) and isinstance(b.value, list)
    a.value.append(2)
    a.source_metadata["k"] = 2
    a.verified = True
    assert b.value == [1] and b.source_metadata == {"k": 1} and b.verified is False


async def test_a_signed_zero_confidence_keeps_its_sign(store: PostgresProfileStore) -> None:
    """float8 keeps the sign of zero and 0.0 == -0.0: a read that built versions from one
    template of equal values would give every version the first one's sign."""
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "signed-zero")
    for name, confidence in (("a", 0.0), ("b", -0.0), ("c", 0.0)):
        await store.update_field(
            tenant, profile.id, ProfileField(name=name, value=1, confidence=confidence)
        )
    found = await store.get_by_id(tenant, profile.id)
    assert found is not None
    signs = {name: math.copysign(1.0, item.confidence) for name, item in found.fields.items()}
    assert signs == {"a": 1.0, "b": -1.0, "c": 1.0}
