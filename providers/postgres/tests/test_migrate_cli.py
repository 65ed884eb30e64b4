"""Migrations as an explicit step, on the real PostgreSQL, through the ``ccvault`` command.

Starting never changes the schema: against a schema that is missing or behind it fails
(exit 6, naming ``ccvault migrate``) and creates nothing; against a newer one it refuses,
naming both versions. ``ccvault migrate`` applies and reports, ``--status`` and
``--dry-run`` change nothing, ``--json`` for all three. ``config check`` reads only.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner, Result

from ccvault.cli import cli
from ccvault_postgres.schema import LATEST_VERSION, MIGRATIONS

EXIT_CONFIGURATION = 6


async def _relations(dsn: str, schema: str) -> list[str]:
    """Every table, index, sequence... in ``schema``, and whether the schema exists."""
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 ORDER BY 1",
            schema,
        )
    finally:
        await conn.close()
    return (["<schema>"] if exists else []) + [r["relname"] for r in rows]


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    name = f"t_mig_{uuid.uuid4().hex[:16]}"
    yield name
    asyncio.run(_execute(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


@pytest.fixture
def config(tmp_path: Path, pg_dsn: str, schema: str) -> Path:
    path = tmp_path / "vault.toml"
    path.write_text(
        "[profile]\n"
        'store_provider = "postgres"\n'
        "cache_enabled = false\n"
        "auto_encrypt_pii = false\n"
        "[providers.postgres]\n"
        f'dsn = "{pg_dsn}"\n'
        f'schema = "{schema}"\n'
    )
    return path


def _invoke(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args])


def test_start_against_an_unmigrated_database_fails_naming_migrate_and_creates_nothing(
    config: Path, pg_dsn: str, schema: str
) -> None:
    for command in (
        ["expire"],
        ["profile", "show", "-t", str(uuid.uuid4()), "-p", str(uuid.uuid4())],
    ):
        result = _invoke(config, *command)
        assert result.exit_code == EXIT_CONFIGURATION, result.output
        assert "`ccvault migrate`" in result.stderr and "has not been created" in result.stderr
        assert result.stderr.count("\n") == 1  # one line, no traceback
    assert asyncio.run(_relations(pg_dsn, schema)) == []  # not even the schema


def test_config_check_reports_the_schema_and_changes_nothing(
    config: Path, pg_dsn: str, schema: str
) -> None:
    result = _invoke(config, "--json", "config", "check")
    assert result.exit_code == EXIT_CONFIGURATION, result.output
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["schema"]["ok"] is False
    assert "ccvault migrate" in checks["schema"]["detail"]
    assert f"version 0 of {LATEST_VERSION}" in checks["schema"]["detail"]
    assert asyncio.run(_relations(pg_dsn, schema)) == []
    assert _invoke(config, "migrate").exit_code == 0
    result = _invoke(config, "--json", "config", "check")
    assert result.exit_code == 0, result.output
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["schema"]["ok"] and checks["store"]["ok"]


def test_status_and_dry_run_change_nothing(config: Path, pg_dsn: str, schema: str) -> None:
    status = _invoke(config, "migrate", "--status")
    assert status.exit_code == EXIT_CONFIGURATION  # pending: scripts can test for it
    assert f"schema version 0\nlatest known version: {LATEST_VERSION}\n" in status.stdout
    assert f"pending: {len(MIGRATIONS)} migration(s)" in status.stdout
    document = json.loads(_invoke(config, "--json", "migrate", "--status").stdout)
    assert document["current"] == 0 and document["latest"] == LATEST_VERSION
    assert [p["version"] for p in document["pending"]] == [m.version for m in MIGRATIONS]
    assert document["up_to_date"] is False and document["newer"] is False

    dry = _invoke(config, "migrate", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f'CREATE SCHEMA IF NOT EXISTS "{schema}";' in dry.stdout
    assert "CREATE TABLE IF NOT EXISTS ccvault_schema_version" in dry.stdout
    assert "CREATE TABLE customer_profiles" in dry.stdout
    for migration in MIGRATIONS:
        assert f"-- migration {migration.version}: {migration.description}" in dry.stdout
    document = json.loads(_invoke(config, "migrate", "--dry-run", "--json").stdout)
    assert document["dry_run"] is True
    assert [s["version"] for s in document["would_apply"]] == [m.version for m in MIGRATIONS]
    steps = {s["version"]: s for s in document["would_apply"]}
    assert any("CREATE TABLE merge_log" in sql for sql in steps[2]["statements"])
    assert asyncio.run(_relations(pg_dsn, schema)) == []  # nothing was run

    both = _invoke(config, "migrate", "--status", "--dry-run")
    assert both.exit_code == 2


def test_migrate_applies_then_reports_up_to_date(config: Path, pg_dsn: str, schema: str) -> None:
    first = _invoke(config, "migrate")
    assert first.exit_code == 0, first.output
    for migration in MIGRATIONS:
        assert f"applied migration {migration.version}: {migration.description}" in first.stdout
    assert f"applied {len(MIGRATIONS)} migration(s)" in first.stdout
    assert f"at version {LATEST_VERSION}" in first.stdout
    second = _invoke(config, "migrate")
    assert second.exit_code == 0
    assert second.stdout == (
        f"schema of the postgres store is up to date (version {LATEST_VERSION})\n"
    )
    document = json.loads(_invoke(config, "--json", "migrate").stdout)
    assert document["applied"] == [] and document["status"] == "up to date"
    assert document["current"] == LATEST_VERSION and document["up_to_date"] is True
    status = _invoke(config, "migrate", "--status")
    assert status.exit_code == 0 and status.stdout.endswith("up to date\n")
    assert _invoke(config, "migrate", "--dry-run").stdout.startswith("-- the schema")
    assert _invoke(config, "expire").exit_code == 0  # and the vault starts


def test_migrate_json_lists_what_it_applied(config: Path) -> None:
    document = json.loads(_invoke(config, "--json", "migrate").stdout)
    assert document["status"] == "applied"
    assert document["applied"] == [
        {"version": m.version, "description": m.description} for m in MIGRATIONS
    ]


def test_a_newer_schema_is_refused_by_start_status_and_migrate(
    config: Path, pg_dsn: str, schema: str
) -> None:
    assert _invoke(config, "migrate").exit_code == 0
    future = LATEST_VERSION + 7
    asyncio.run(
        _execute(
            pg_dsn,
            f'INSERT INTO "{schema}".ccvault_schema_version (version, description) '
            f"VALUES ({future}, 'from the future')",
        )
    )
    before = asyncio.run(_relations(pg_dsn, schema))
    for command in (["expire"], ["migrate"], ["migrate", "--dry-run"]):
        result = _invoke(config, *command)
        assert result.exit_code == EXIT_CONFIGURATION, (command, result.output)
        assert f"version {future}, newer" in result.stderr
        assert f"(latest {LATEST_VERSION})" in result.stderr
    status = _invoke(config, "--json", "migrate", "--status")
    assert status.exit_code == EXIT_CONFIGURATION
    assert json.loads(status.stdout)["newer"] is True
    assert asyncio.run(_relations(pg_dsn, schema)) == before


def test_a_schema_one_version_behind_is_refused_until_migrated(
    config: Path, pg_dsn: str, schema: str
) -> None:
    assert _invoke(config, "migrate").exit_code == 0
    asyncio.run(
        _execute(
            pg_dsn,
            f'DELETE FROM "{schema}".ccvault_schema_version WHERE version = {LATEST_VERSION}',
        )
    )
    result = _invoke(config, "expire")
    assert result.exit_code == EXIT_CONFIGURATION
    assert f"version {LATEST_VERSION - 1}, behind" in result.stderr
    assert "ccvault migrate" in result.stderr
