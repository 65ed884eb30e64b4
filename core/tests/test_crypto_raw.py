"""No PII plaintext at rest: the raw SQLite file, raw PostgreSQL rows, raw Redis values.

The full stack of ``ccvault.open_store`` (provider -> Redis cache -> encryption) on the real
SQLite file, the real PostgreSQL server and the real Redis. After writing and reading PII
(so the cache is filled), every byte held is read directly, bypassing the vault. A non-PII
marker value written alongside proves the raw reads do see stored data.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

import ccvault
from ccvault.crypto import ENVELOPE_PREFIX, EncryptedProfileStore, generate_key_entry
from ccvault.models import Channel, Consent, ProfileField, ProfileFieldDefinition, SourceType
from ccvault.settings import VaultSettings
from ccvault.store import ProfileStore
from ccvault_postgres.testing import admin_dsn, dsn_with_database

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET_EMAIL = "alice.secret.4711@example.com"
SECRET_QUOTE = "she said her passport is XQ998877"
SECRET_PASSPORT = "XQ998877"
VISIBLE = "plainmarker-language-5150"
# consent IP addresses (documentation ranges), sealed at rest like field values
SECRET_IPV4 = "203.0.113.77"
SECRET_IPV6 = "2001:db8::77:4711"


@pytest.fixture
def prefix() -> str:
    return f"test-raw-{uuid.uuid4().hex}:"


async def redis_dump(prefix: str) -> list[tuple[bytes, bytes]]:
    """Every key under ``prefix`` with its whole value, read straight from Redis."""
    client = Redis.from_url(REDIS_URL)
    dumped: list[tuple[bytes, bytes]] = []
    try:
        async for key in client.scan_iter(match=f"{prefix}*"):
            kind = (await client.type(key)).decode()
            value: Any
            if kind == "string":
                value = await client.get(key) or b""
            elif kind == "hash":
                value = b"".join(k + v for k, v in (await client.hgetall(key)).items())
            elif kind == "set":
                value = b"".join(await client.smembers(key))
            elif kind == "zset":
                value = b"".join(await client.zrange(key, 0, -1))
            elif kind == "list":
                value = b"".join(await client.lrange(key, 0, -1))
            else:  # pragma: no cover - the cache uses none of the other types
                value = await client.dump(key) or b""
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


async def write_and_read_pii(store: ProfileStore) -> tuple[uuid.UUID, uuid.UUID]:
    """Write PII (value, metadata, lineage) and read it back through every cached path."""
    assert isinstance(store, EncryptedProfileStore)
    tenant, agent = uuid.uuid4(), uuid.uuid4()
    for name in ("email", "passport_number"):
        await store.save_field_definition(
            ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name=name, is_pii=True)
        )
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, "+31699887766")
    profile.consents = [
        Consent(consent_type="marketing", granted=True, ip_address=SECRET_IPV4),
        Consent(consent_type="calls", granted=False, ip_address=SECRET_IPV6),
        Consent(consent_type="mail", granted=True),
    ]
    await store.save(profile)
    email = ProfileField(name="email", value=SECRET_EMAIL, source_metadata={"quote": SECRET_QUOTE})
    await store.update_field(tenant, profile.id, email)
    passport = ProfileField(
        name="passport_number",
        value=SECRET_PASSPORT,
        source_item_id=email.id,
        source_item_type=SourceType.PROFILE_FIELD,
        source_metadata={"ocr": SECRET_PASSPORT},
    )
    await store.update_field(tenant, profile.id, passport)
    await store.update_field(tenant, profile.id, ProfileField(name="language", value=VISIBLE))
    # reads that fill the cache
    for _ in range(2):
        got = await store.get_by_id(tenant, profile.id)
        assert got is not None and got.fields["email"].value == SECRET_EMAIL
        assert [(str(c.ip_address), c.ip_address_sealed) for c in got.consents] == [
            (SECRET_IPV4, None),
            (SECRET_IPV6, None),
            ("None", None),
        ]
        assert await store.get_by_customer_id(tenant, got.customer_id) is not None
        chain = await store.get_derivation_chain(tenant, passport.id, "profile_field")
        assert chain[-1]["source_metadata"] == {"ocr": SECRET_PASSPORT}
        assert [d.name for d in await store.get_field_definitions(tenant, agent)] == [
            "email",
            "passport_number",
        ]
    return tenant, profile.id


def assert_no_plaintext(raw: bytes, where: str) -> None:
    assert VISIBLE.encode() in raw, f"the raw read of {where} sees no stored data at all"
    assert ENVELOPE_PREFIX.encode() in raw, f"no ciphertext found in {where}"
    for secret in (SECRET_EMAIL, SECRET_QUOTE, SECRET_PASSPORT, SECRET_IPV4, SECRET_IPV6):
        assert secret.encode() not in raw, f"plaintext {secret!r} found in {where}"


def _settings(prefix: str, monkeypatch: pytest.MonkeyPatch, **profile: Any) -> VaultSettings:
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", generate_key_entry("k1"))
    return ccvault.load_settings(
        cache_enabled=True,
        auto_encrypt_pii=True,
        redis={"url": REDIS_URL, "key_prefix": prefix},
        **profile,
    )


async def test_sqlite_file_and_redis_hold_no_plaintext(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "vault.db"
    settings = _settings(prefix, monkeypatch, store_provider="sqlite")
    settings.providers["sqlite"] = {"path": str(db)}
    try:
        await ccvault.migrate_schema(settings)  # the explicit step: opening never migrates
        async with ccvault.open_store(settings) as store:
            await write_and_read_pii(store)
            cached = await redis_dump(prefix)
        files = sorted(tmp_path.glob("vault.db*"))  # noqa: ASYNC240 - the db, its WAL and shm
        raw = b"".join(path.read_bytes() for path in files)
        assert_no_plaintext(raw, f"the SQLite files {[p.name for p in files]}")
        assert cached, "nothing was cached"
        assert_no_plaintext(b"".join(k + v for k, v in cached), "Redis")
    finally:
        await redis_cleanup(prefix)


@pytest.fixture
async def pg_schema() -> AsyncIterator[tuple[str, str]]:
    dsn = dsn_with_database(admin_dsn(), "test")
    schema = f"t_raw_{uuid.uuid4().hex[:16]}"
    yield dsn, schema
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def postgres_rows(dsn: str, schema: str) -> bytes:
    """Every row of every table of the schema, as text, read with plain SQL."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
        assert tables, "the provider created no tables"
        rows = []
        for table in tables:
            name = table["table_name"]
            for row in await conn.fetch(f'SELECT t::text AS r FROM "{schema}"."{name}" t'):
                rows.append(row["r"])
    finally:
        await conn.close()
    return "\n".join(rows).encode()


async def test_postgres_rows_and_redis_hold_no_plaintext(
    pg_schema: tuple[str, str], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn, schema = pg_schema
    settings = _settings(prefix, monkeypatch, store_provider="postgres")
    settings.providers["postgres"] = {"dsn": dsn, "schema": schema}
    try:
        await ccvault.migrate_schema(settings)  # the explicit step: opening never migrates
        async with ccvault.open_store(settings) as store:
            await write_and_read_pii(store)
            cached = await redis_dump(prefix)
        assert_no_plaintext(await postgres_rows(dsn, schema), "PostgreSQL rows")
        assert cached, "nothing was cached"
        assert_no_plaintext(b"".join(k + v for k, v in cached), "Redis")
    finally:
        await redis_cleanup(prefix)


@pytest.mark.parametrize("provider", ["sqlite", "postgres"])
async def test_rotate_keys_on_the_real_databases(
    provider: str,
    tmp_path: Path,
    prefix: str,
    pg_schema: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k1, k2 = generate_key_entry("k1"), generate_key_entry("k2")
    settings = _settings(prefix, monkeypatch, store_provider=provider)
    dsn, schema = pg_schema
    settings.providers["sqlite"] = {"path": str(tmp_path / "vault.db")}
    settings.providers["postgres"] = {"dsn": dsn, "schema": schema}
    try:
        settings.profile.pii_encryption_key_id = k1
        await ccvault.migrate_schema(settings)  # the explicit step: opening never migrates
        async with ccvault.open_store(settings) as store:
            tenant, pid = await write_and_read_pii(store)
            await store.update_field(
                tenant, pid, ProfileField(name="email", value="v2@example.com")
            )
        settings.profile.pii_encryption_key_id = f"{k1},{k2}"
        async with ccvault.open_store(settings) as store:
            assert isinstance(store, EncryptedProfileStore)
            reports = await store.rotate_keys()
            assert sum(r.rewritten for r in reports) == 3  # two email versions, one passport
            assert sum(r.rewritten for r in await store.rotate_keys()) == 0
        settings.profile.pii_encryption_key_id = k2
        async with ccvault.open_store(settings) as store:
            history = await store.get_field_history(tenant, pid, "email")
            assert [v.value for v in history] == ["v2@example.com", SECRET_EMAIL]
            # the consent IPs were re-sealed under k2 too (k1 is gone: they would not open)
            rotated = await store.get_by_id(tenant, pid)
            assert rotated is not None
            assert [str(c.ip_address) for c in rotated.consents][:2] == [SECRET_IPV4, SECRET_IPV6]
            assert history[1].source_metadata == {"quote": SECRET_QUOTE}
    finally:
        await redis_cleanup(prefix)
