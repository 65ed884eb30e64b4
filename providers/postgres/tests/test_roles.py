"""Least privilege on the real PostgreSQL: a migration role and a DML-only runtime role.

The roles and grants are exactly the SQL block of docs/operations.md ("Roles and
privileges"), with unique role and schema names (roles are cluster-wide: dropped afterwards).
``ccvault migrate`` runs as the migration role; then the vault (profiles, fields, reads,
merge, purge, expiry) and ``ccvault worker --once`` with the PostgreSQL lease run as the
runtime role, which is shown unable to run DDL: starting does not need it.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import asyncpg.exceptions as pgerr
import pytest
from click.testing import CliRunner

from ccvault.cli import cli
from ccvault.models import Channel, ProfileField
from ccvault_postgres import PostgresProfileStore, PostgresSettings
from ccvault_postgres.schema import LATEST_VERSION, MIGRATIONS

OPERATIONS = Path(__file__).resolve().parents[3] / "docs" / "operations.md"


def documented_grants() -> str:
    """The first ```sql block of the "Roles and privileges" section, as documented."""
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text[text.index("## 2. Roles and privileges") :]
    match = re.search(r"```sql\n(.*?)```", section, re.S)
    assert match is not None, "no ```sql block in the roles section of docs/operations.md"
    return match.group(1)


def with_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Roles:
    owner: str
    app: str
    schema: str
    owner_dsn: str
    app_dsn: str


async def _run_admin(dsn: str, statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statements)
    finally:
        await conn.close()


@pytest.fixture
def roles(pg_dsn: str) -> Iterator[Roles]:
    suffix = uuid.uuid4().hex[:12]
    owner, app, schema = f"ccvault_t_owner_{suffix}", f"ccvault_t_app_{suffix}", f"t_roles_{suffix}"
    sql = documented_grants()
    # the documented names, made unique (the test server trusts loopback: no password)
    sql = sql.replace(" PASSWORD '...'", "")
    sql = sql.replace("ccvault_owner", owner).replace("ccvault_app", app)
    sql = re.sub(r"\bccvault\b", schema, sql)
    asyncio.run(_run_admin(pg_dsn, sql))
    try:
        yield Roles(owner, app, schema, with_user(pg_dsn, owner), with_user(pg_dsn, app))
    finally:
        asyncio.run(
            _run_admin(
                pg_dsn,
                f'DROP SCHEMA IF EXISTS "{schema}" CASCADE; '
                f'DROP OWNED BY "{owner}", "{app}"; DROP ROLE "{owner}", "{app}";',
            )
        )


def _config(path: Path, dsn: str, schema: str) -> Path:
    path.write_text(
        "[profile]\n"
        'store_provider = "postgres"\n'
        "cache_enabled = false\n"
        "auto_encrypt_pii = false\n"
        "[providers.postgres]\n"
        f'dsn = "{dsn}"\n'
        f'schema = "{schema}"\n'
        "[worker]\n"
        'lease = "postgres"\n'
    )
    return path


async def _refused(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(pgerr.InsufficientPrivilegeError):
            await conn.execute(statement)
    finally:
        await conn.close()


def test_the_runtime_role_runs_the_vault_with_dml_only(roles: Roles, tmp_path: Path) -> None:
    owner_config = _config(tmp_path / "owner.toml", roles.owner_dsn, roles.schema)
    app_config = _config(tmp_path / "app.toml", roles.app_dsn, roles.schema)

    # the runtime role cannot migrate (nothing is created), and cannot start before it
    denied = CliRunner().invoke(cli, ["--config", str(app_config), "migrate"])
    assert denied.exit_code != 0 and "permission denied" in denied.stderr
    early = CliRunner().invoke(cli, ["--config", str(app_config), "expire"])
    assert early.exit_code == 6 and "ccvault migrate" in early.stderr

    migrated = CliRunner().invoke(cli, ["--config", str(owner_config), "migrate"])
    assert migrated.exit_code == 0, migrated.output
    assert f"applied {len(MIGRATIONS)} migration(s)" in migrated.stdout

    asyncio.run(_runtime_scenario(roles))

    worker = CliRunner().invoke(
        cli, ["--config", str(app_config), "--json", "worker", "--once", "--no-metrics"]
    )
    assert worker.exit_code == 0, worker.output
    # with nothing pending, migrate as the runtime role runs no DDL: it just reports
    again = CliRunner().invoke(cli, ["--config", str(app_config), "migrate"])
    assert again.exit_code == 0, again.output
    assert f"up to date (version {LATEST_VERSION})" in again.stdout

    asyncio.run(_runtime_cannot_change_the_schema(roles))
    asyncio.run(_later_tables_reach_the_runtime_role(roles))


async def _runtime_scenario(roles: Roles) -> None:
    settings = PostgresSettings(dsn=roles.app_dsn, db_schema=roles.schema)
    async with PostgresProfileStore(settings) as store:
        tenant = uuid.uuid4()
        first = await store.get_or_create(tenant, Channel.WHATSAPP, "+15550100")
        second = await store.get_or_create(tenant, Channel.EMAIL, "ana@example.org")
        await store.update_field(tenant, first.id, ProfileField(name="city", value="Oslo"))
        await store.update_field(tenant, first.id, ProfileField(name="city", value="Rome"))
        await store.update_field(tenant, second.id, ProfileField(name="email", value="a@x.org"))
        found = await store.get_by_id(tenant, first.id, include_history=True)
        assert found is not None and found.fields["city"].value == "Rome"
        assert len(found.field_history["city"]) == 2
        assert await store.merge_profiles(tenant, second.id, first.id)
        merged = await store.get_by_id(tenant, first.id)
        assert merged is not None and merged.fields["email"].value == "a@x.org"
        assert await store.expire_stale_fields(tenant) == 0
        assert await store.purge_profile(tenant, first.id)
        assert await store.get_by_id(tenant, first.id) is None
        await store.get_or_create(uuid.uuid4(), Channel.WEB, "for-the-worker")


async def _runtime_cannot_change_the_schema(roles: Roles) -> None:
    schema = roles.schema
    for statement in (
        f'CREATE TABLE "{schema}".intruder (a int)',
        f'CREATE SCHEMA "{schema}_other"',
        f'CREATE INDEX ON "{schema}".customer_profiles (updated_at)',
    ):
        await _refused(roles.app_dsn, statement)
    conn = await asyncpg.connect(roles.app_dsn)
    try:
        for statement in (
            f'ALTER TABLE "{schema}".customer_profiles ADD COLUMN intruder int',
            f'DROP TABLE "{schema}".merge_log',
            f'TRUNCATE "{schema}".customer_profiles',
        ):
            with pytest.raises(pgerr.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()


async def _later_tables_reach_the_runtime_role(roles: Roles) -> None:
    """A table a later migration adds (created by the owner) is usable by the runtime role
    through the default privileges, with no new GRANT."""
    owner = await asyncpg.connect(roles.owner_dsn)
    try:
        await owner.execute(
            f'CREATE TABLE "{roles.schema}".later_table (id bigint GENERATED ALWAYS AS '
            "IDENTITY PRIMARY KEY, note text)"
        )
    finally:
        await owner.close()
    app = await asyncpg.connect(roles.app_dsn)
    try:
        await app.execute(f"INSERT INTO \"{roles.schema}\".later_table (note) VALUES ('x')")
        assert await app.fetchval(f'SELECT count(*) FROM "{roles.schema}".later_table') == 1
        await app.execute(f'DELETE FROM "{roles.schema}".later_table')
    finally:
        await app.close()
