"""GDPR through the real ``ccvault`` processes: export writes the document; purge leaves
nothing about the customer in the database (raw SQLite file, raw PostgreSQL rows) or in
Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

import ccvault
from ccvault.crypto import generate_key_entry
from ccvault.models import Channel, ProfileField, ProfileFieldDefinition
from ccvault_postgres.testing import admin_dsn, dsn_with_database

REDIS_URL = "redis://127.0.0.1:6379/0"
PHONE = "+31655544433"
EMAIL = "gdpr.subject.8080@example.com"
VISIBLE = "gdprmarker-nonpii-3131"


async def redis_dump(prefix: str) -> list[tuple[bytes, bytes]]:
    """Every key under ``prefix`` with its value (strings, hashes, sets), read raw."""
    client = Redis.from_url(REDIS_URL)
    dumped: list[tuple[bytes, bytes]] = []
    try:
        async for key in client.scan_iter(match=f"{prefix}*"):
            kind = (await client.type(key)).decode()
            if kind == "string":
                value = await client.get(key) or b""
            elif kind == "hash":
                value = b"".join(k + v for k, v in (await client.hgetall(key)).items())
            elif kind == "set":
                value = b"".join(await client.smembers(key))
            elif kind == "zset":
                value = b"".join(await client.zrange(key, 0, -1))
            else:
                value = b"".join(await client.lrange(key, 0, -1))
            dumped.append((key, value))
    finally:
        await client.aclose()
    return dumped


async def redis_cleanup(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def postgres_rows(dsn: str, schema: str) -> bytes:
    """Every row of every table of the schema, as text, read with plain SQL."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
        rows = []
        for table in tables:
            name = table["table_name"]
            for row in await conn.fetch(f'SELECT t::text AS r FROM "{schema}"."{name}" t'):
                rows.append(row["r"])
    finally:
        await conn.close()
    return "\n".join(rows).encode()


def _run(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccvault", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


async def _seed(config: Path) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    tenant, agent = uuid.uuid4(), uuid.uuid4()
    async with ccvault.open_store(ccvault.load_settings(config)) as store:
        await store.save_field_definition(
            ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name="email", is_pii=True)
        )
        profile = await store.get_or_create(tenant, Channel.WHATSAPP, PHONE)
        await store.update_field(tenant, profile.id, ProfileField(name="email", value="a@b.co"))
        await store.update_field(tenant, profile.id, ProfileField(name="email", value=EMAIL))
        await store.update_field(tenant, profile.id, ProfileField(name="hobby", value=VISIBLE))
        # fill the cache
        assert await store.get_by_id(tenant, profile.id) is not None
        assert await store.get_by_channel_identity(tenant, Channel.WHATSAPP, PHONE) is not None
        # a second customer of the tenant, who must survive the purge
        other = await store.get_or_create(tenant, Channel.SMS, "+31600000000")
        await store.update_field(tenant, other.id, ProfileField(name="hobby", value="chess"))
        return tenant, profile.id, profile.customer_id


def _traces(profile_id: uuid.UUID, customer_id: uuid.UUID) -> list[bytes]:
    return [
        str(profile_id).encode(),
        profile_id.bytes,
        profile_id.hex.encode(),
        str(customer_id).encode(),
        customer_id.bytes,
        customer_id.hex.encode(),
        PHONE.encode(),
        VISIBLE.encode(),
    ]


def _export_and_purge(
    config: Path, env: dict[str, str], tenant: uuid.UUID, profile_id: uuid.UUID, tmp: Path
) -> None:
    out = tmp / "export.json"
    exported = _run(
        config, env, "profile", "export", "-t", str(tenant), "-p", str(profile_id), "-o", str(out)
    )
    assert exported.returncode == 0, exported.stderr
    document = json.loads(out.read_text())
    assert [v["value"] for v in document["profile"]["field_history"]["email"]] == [EMAIL, "a@b.co"]
    assert document["profile"]["channel_identities"][0]["channel_user_id"] == PHONE
    purged = _run(config, env, "profile", "purge", "-t", str(tenant), "-p", str(profile_id), "-y")
    assert purged.returncode == 0, purged.stderr
    assert f"profile {profile_id} purged" in purged.stdout
    again = _run(config, env, "profile", "purge", "-t", str(tenant), "-p", str(profile_id), "-y")
    assert again.returncode == 3 and again.stderr.startswith("ccvault: error:")  # not found
    show = _run(config, env, "profile", "show", "-t", str(tenant), "--channel", "whatsapp",
                "--user", PHONE)  # fmt: skip
    assert show.returncode == 3


@pytest.fixture
def prefix() -> Iterator[str]:
    value = f"test-gdpr-{uuid.uuid4().hex}:"
    yield value
    asyncio.run(redis_cleanup(value))


def _config(
    tmp_path: Path, prefix: str, provider: str, options: str
) -> tuple[Path, dict[str, str]]:
    config = tmp_path / "vault.toml"
    config.write_text(
        "[profile]\n"
        f'store_provider = "{provider}"\n'
        "cache_enabled = true\n"
        "auto_encrypt_pii = true\n"
        "[redis]\n"
        f'url = "{REDIS_URL}"\n'
        f'key_prefix = "{prefix}"\n'
        f"[providers.{provider}]\n{options}"
    )
    return config, {"PROFILE_PII_ENCRYPTION_KEY": generate_key_entry("k1")}


def test_sqlite_purge_leaves_nothing_in_the_file_or_redis(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "vault.db"
    config, env = _config(tmp_path, prefix, "sqlite", f'path = "{db}"\n')
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", env["PROFILE_PII_ENCRYPTION_KEY"])
    migrate = _run(config, env, "migrate")  # the explicit step: opening never migrates
    assert migrate.returncode == 0 and "applied" in migrate.stdout, migrate.stderr
    tenant, profile_id, customer_id = asyncio.run(_seed(config))
    assert any(k for k, _ in asyncio.run(redis_dump(prefix))), "nothing was cached"
    _export_and_purge(config, env, tenant, profile_id, tmp_path)
    raw = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("vault.db*")))
    assert b"chess" in raw  # the other customer is still there: the raw read sees data
    cached = b"".join(k + v for k, v in asyncio.run(redis_dump(prefix)))
    for trace in _traces(profile_id, customer_id):
        assert trace not in raw, f"{trace!r} left in the SQLite file"
    for trace in _traces(profile_id, customer_id):
        assert trace not in cached, f"{trace!r} left in Redis"


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    dsn = dsn_with_database(admin_dsn(), "test")
    schema = f"t_gdpr_{uuid.uuid4().hex[:16]}"
    yield dsn, schema

    async def drop() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def test_postgres_purge_leaves_no_row_or_cache_entry(
    tmp_path: Path, prefix: str, pg_schema: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn, schema = pg_schema
    config, env = _config(tmp_path, prefix, "postgres", f'dsn = "{dsn}"\nschema = "{schema}"\n')
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", env["PROFILE_PII_ENCRYPTION_KEY"])
    migrate = _run(config, env, "migrate")  # the explicit step: opening never migrates
    assert migrate.returncode == 0 and "applied" in migrate.stdout, migrate.stderr
    tenant, profile_id, customer_id = asyncio.run(_seed(config))
    assert asyncio.run(redis_dump(prefix)), "nothing was cached"
    migrate = _run(config, env, "migrate")
    assert migrate.returncode == 0 and "up to date" in migrate.stdout
    _export_and_purge(config, env, tenant, profile_id, tmp_path)
    rows = asyncio.run(postgres_rows(dsn, schema))
    assert b"chess" in rows
    cached = b"".join(k + v for k, v in asyncio.run(redis_dump(prefix)))
    for trace in _traces(profile_id, customer_id):
        assert trace not in rows, f"{trace!r} left in PostgreSQL"
    for trace in _traces(profile_id, customer_id):
        assert trace not in cached, f"{trace!r} left in Redis"
