"""The store behind a private PgBouncer in TRANSACTION mode (``transaction_pooler = true``).

PgBouncer runs on a free loopback port in front of the shared server, with a pool of two
server connections, so the store's pooled client connections share server connections
between transactions. Skipped, with the reason, where the ``pgbouncer`` binary is absent.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from ccvault import errors
from ccvault.cli import cli
from ccvault.models import Channel, ProfileField
from ccvault_postgres import PostgresProfileStore, PostgresSettings
from ccvault_postgres.schema import MIGRATIONS
from ccvault_postgres.testing import (
    PGBOUNCER_BIN,
    PgBouncer,
    admin_dsn,
    create_database,
    drop_database,
    dsn_with_database,
    pgbouncer,
)

pytestmark = pytest.mark.skipif(
    not PGBOUNCER_BIN,
    reason="pgbouncer is not installed (apt-get install pgbouncer): transaction-pooler tests",
)

SCHEMA = "pooled"


@pytest.fixture
def database() -> Iterator[str]:
    server = admin_dsn()
    name = asyncio.run(create_database(server))
    try:
        yield name
    finally:
        asyncio.run(drop_database(server, name))


@pytest.fixture
def bouncer() -> Iterator[PgBouncer]:
    with pgbouncer(admin_dsn(), pool_size=2) as running:
        yield running


async def _set_role_search_path(database: str) -> None:
    """What the operator does for a transaction pooler: session settings on the role."""
    conn = await asyncpg.connect(dsn_with_database(admin_dsn(), database))
    try:
        await conn.execute(
            f'ALTER ROLE postgres IN DATABASE "{database}" SET search_path = {SCHEMA}; '
            f'ALTER ROLE postgres IN DATABASE "{database}" SET statement_timeout = 30000'
        )
    finally:
        await conn.close()


def _settings(bouncer: PgBouncer, database: str) -> PostgresSettings:
    return PostgresSettings(
        dsn=bouncer.dsn(database),
        db_schema=SCHEMA,
        transaction_pooler=True,
        min_pool_size=1,
        max_pool_size=8,
    )


async def test_session_parameters_are_refused_by_the_pooler_without_the_setting(
    bouncer: PgBouncer, database: str
) -> None:
    plain = PostgresProfileStore(PostgresSettings(dsn=bouncer.dsn(database), db_schema=SCHEMA))
    with pytest.raises(Exception, match="unsupported startup parameter"):
        await plain.schema_status()


async def test_a_role_without_the_search_path_is_refused_at_start(
    bouncer: PgBouncer, database: str
) -> None:
    store = PostgresProfileStore(_settings(bouncer, database))
    await store.migrate()  # creates the schema: the migration transaction names it itself
    with pytest.raises(errors.ConfigurationError, match=r"ALTER ROLE .* SET search_path"):
        await store.setup()


def test_the_vault_works_through_pgbouncer_in_transaction_mode(
    bouncer: PgBouncer, database: str, tmp_path: Path
) -> None:
    asyncio.run(_set_role_search_path(database))
    config = tmp_path / "pooled.toml"
    config.write_text(
        "[profile]\n"
        'store_provider = "postgres"\n'
        "cache_enabled = false\n"
        "auto_encrypt_pii = false\n"
        "[providers.postgres]\n"
        f'dsn = "{bouncer.dsn(database)}"\n'
        f'schema = "{SCHEMA}"\n'
        "transaction_pooler = true\n"
        "[worker]\n"
        'lease = "postgres"\n'
    )
    # the migration is one transaction (its advisory lock is transaction-scoped)
    migrated = CliRunner().invoke(cli, ["--config", str(config), "migrate"])
    assert migrated.exit_code == 0, migrated.output
    assert f"applied {len(MIGRATIONS)} migration(s)" in migrated.stdout

    asyncio.run(_pooled_scenario(_settings(bouncer, database)))

    worker = CliRunner().invoke(cli, ["--config", str(config), "worker", "--once", "--no-metrics"])
    assert worker.exit_code == 0, worker.output


async def _pooled_scenario(settings: PostgresSettings) -> None:
    async with PostgresProfileStore(settings) as store:
        tenant = uuid.uuid4()
        profiles = [
            await store.get_or_create(tenant, Channel.WEB, f"visitor-{n}") for n in range(4)
        ]
        # 8 client connections over 2 server connections, 40 writes at once
        await asyncio.gather(
            *(
                store.update_field(tenant, p.id, ProfileField(name="counter", value=i))
                for i in range(10)
                for p in profiles
            )
        )
        for profile in profiles:
            history = await store.get_field_history(tenant, profile.id, "counter")
            assert len(history) == 10
        assert await store.merge_profiles(tenant, profiles[1].id, profiles[0].id)
        assert await store.purge_profile(tenant, profiles[2].id)
        found = await store.get_by_id(tenant, profiles[0].id, include_history=True)
        assert found is not None and len(found.field_history["counter"]) >= 10
