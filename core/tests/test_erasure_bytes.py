"""Erasure by data subject leaves no byte of the subject anywhere (issue 12, finding 1).

A unique marker is planted in every place that carries personal data, over the profiles
of one person: an earlier profile soft-deleted (its identity released), the live profile,
a profile merged into it, their field values and history, identities, consent IP
addresses, asset names and paths, verification results and extractor metadata, and so the
merge log too. The subject is then erased by one channel identity, through the production
stacks (PostgreSQL or a SQLite file, behind the Redis cache, with and without encryption),
and everything is read raw: every row of every table of the PostgreSQL schema as text, the
SQLite database file with its -wal and -shm files as bytes, and every Redis key under the
store's prefix (names and values). The marker must be there before (so the scan can see
it) and nowhere after; a bystander's marker must still be there.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

import ccvault
from ccvault.crypto import generate_key_entry
from ccvault.models import (
    Channel,
    ChannelIdentity,
    Consent,
    ProfileAsset,
    ProfileField,
    ProfileFieldDefinition,
    utcnow,
)
from ccvault.store import ProfileStore
from ccvault_postgres.testing import admin_dsn, dsn_with_database

REDIS_URL = "redis://127.0.0.1:6379/0"
BASE = utcnow().replace(microsecond=0)  # every timestamp of the test derives from it


@dataclass(frozen=True)
class Markers:
    """Unique strings of this run: the subject's, its IP address, and a bystander's."""

    subject: str
    phone: str
    ip: str
    bystander: str

    @classmethod
    def new(cls) -> Markers:
        tag = secrets.token_hex(6)
        return cls(
            subject=f"erasemark{tag}",
            phone="+4915" + str(secrets.randbelow(10**9)).zfill(9),
            ip=f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::4d",
            bystander=f"keepmark{tag}",
        )

    def subject_traces(self) -> list[bytes]:
        return [self.subject.encode(), self.phone.encode(), self.ip.encode()]


async def _redis_bytes(prefix: str) -> bytes:
    """Every key under ``prefix``, name and value, read raw."""
    client: Any = Redis.from_url(REDIS_URL)  # bytes in, bytes out (no decode_responses)
    out: list[bytes] = []
    try:
        async for key in client.scan_iter(match=f"{prefix}*"):
            out.append(key)
            kind = (await client.type(key)).decode()
            if kind == "string":
                out.append(await client.get(key) or b"")
            elif kind == "hash":
                out.extend(k + v for k, v in (await client.hgetall(key)).items())
            elif kind == "set":
                out.extend(await client.smembers(key))
            elif kind == "zset":
                out.extend(await client.zrange(key, 0, -1))
            elif kind == "list":
                out.extend(await client.lrange(key, 0, -1))
    finally:
        await client.aclose()
    return b"\n".join(out)


async def _redis_cleanup(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def _postgres_bytes(dsn: str, schema: str) -> bytes:
    """Every row of every table of the schema (released identity rows included), as text."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
            schema,
        )
        assert {"channel_identities", "merge_log", "consents"} <= {t["table_name"] for t in tables}
        rows: list[str] = []
        for table in tables:
            name = table["table_name"]
            rows.extend(
                r["r"] for r in await conn.fetch(f'SELECT t::text AS r FROM "{schema}"."{name}" t')
            )
    finally:
        await conn.close()
    return "\n".join(rows).encode()


def _sqlite_bytes(database: Path) -> bytes:
    """The database file and its -wal and -shm files, raw."""
    parts = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


async def _plant(store: ProfileStore, tenant: uuid.UUID, m: Markers) -> None:
    """One subject over three profiles (deleted, live, merged away), and a bystander."""
    agent = uuid.uuid4()
    await store.save_field_definition(
        ProfileFieldDefinition(tenant_id=tenant, agent_id=agent, name="full_name", is_pii=True)
    )
    meta = {"extractor": "regex", "quote": f"my name is {m.subject}"}

    def value(name: str, text: str, seconds: int) -> ProfileField:
        return ProfileField(
            name=name,
            value=text,
            source_metadata=meta,
            verified=True,
            verified_by=f"agent {m.subject}",
            verification_method="otp",
            collected_at=BASE + timedelta(seconds=seconds),
        )

    # an earlier profile of the phone, soft-deleted: its identity is released
    old = await store.get_or_create(tenant, Channel.WHATSAPP, m.phone)
    await store.update_field(tenant, old.id, value("full_name", f"{m.subject} senior", 1))
    await store.update_field(tenant, old.id, value("hobby", f"old {m.subject}", 2))
    assert await store.delete(tenant, old.id)
    # the live profile: history, an asset, a consent, a second identity
    live = await store.get_or_create(tenant, Channel.WHATSAPP, m.phone)
    await store.update_field(tenant, live.id, value("full_name", f"{m.subject} v1", 3))
    await store.update_field(tenant, live.id, value("full_name", f"{m.subject} v2", 4))
    await store.update_field(tenant, live.id, value("hobby", f"chess {m.subject}", 5))
    await store.add_asset(
        tenant,
        live.id,
        ProfileAsset(
            name=f"passport_{m.subject}",
            asset_type="image",
            storage_provider="s3",
            storage_path=f"s3://vault/{m.subject}/passport.png",
            verified=True,
            verification_result={"holder": m.subject},
        ),
    )
    assert await store.link_channel(
        tenant,
        live.id,
        ChannelIdentity(channel=Channel.EMAIL, channel_user_id=f"{m.subject}@example.com"),
    )
    current = await store.get_by_id(tenant, live.id)
    assert current is not None
    current.consents = [Consent(consent_type="marketing", granted=True, ip_address=m.ip)]
    await store.save(current)
    # a profile of the same person merged into the live one (the merge log records it)
    away = await store.get_or_create(tenant, Channel.SMS, f"sms-{m.subject}")
    await store.update_field(tenant, away.id, value("nickname", f"nick {m.subject}", 6))
    away_now = await store.get_by_id(tenant, away.id)
    assert away_now is not None
    away_now.consents = [Consent(consent_type="calls", granted=True, ip_address=m.ip)]
    await store.save(away_now)
    await store.merge_profiles(tenant, away.id, live.id, reason="same person")
    # a bystander, who must survive
    other = await store.get_or_create(tenant, Channel.WHATSAPP, "+3160" + m.bystander[-7:])
    await store.update_field(tenant, other.id, ProfileField(name="hobby", value=m.bystander))
    # fill the cache: every lookup key and body
    for found in (
        await store.get_by_channel_identity(tenant, Channel.WHATSAPP, m.phone),
        await store.get_by_channel_identity(tenant, Channel.EMAIL, f"{m.subject}@example.com"),
        await store.get_by_customer_id(tenant, live.customer_id, include_history=True),
        await store.get_by_id(tenant, other.id),
    ):
        assert found is not None


@pytest.fixture
def prefix() -> Iterator[str]:
    value = f"test-erasure-{uuid.uuid4().hex}:"
    yield value
    asyncio.run(_redis_cleanup(value))


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    dsn = dsn_with_database(admin_dsn(), "test")
    schema = f"t_erase_{uuid.uuid4().hex[:16]}"
    yield dsn, schema

    async def drop() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def _config(tmp_path: Path, prefix: str, provider: str, options: str, encrypt: bool) -> Path:
    config = tmp_path / "vault.toml"
    config.write_text(
        "[profile]\n"
        f'store_provider = "{provider}"\n'
        "cache_enabled = true\n"
        f"auto_encrypt_pii = {'true' if encrypt else 'false'}\n"
        "[redis]\n"
        f'url = "{REDIS_URL}"\n'
        f'key_prefix = "{prefix}"\n'
        f"[providers.{provider}]\n{options}"
    )
    return config


def _migrate(config: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ccvault", "-c", str(config), "migrate"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr


async def _erase_and_scan(config: Path, prefix: str, read: Callable[[], Awaitable[bytes]]) -> None:
    m = Markers.new()
    tenant = uuid.uuid4()
    async with ccvault.open_store(ccvault.load_settings(config)) as store:
        await _plant(store, tenant, m)
        before_db, before_cache = await read(), await _redis_bytes(prefix)
        # the scans see the data: the planted marker is there before the erasure
        assert m.bystander.encode() in before_db
        assert m.subject.encode() in before_db
        assert m.subject.encode() in before_cache
        report = await store.erase_subject(
            tenant, channel=Channel.WHATSAPP, channel_user_id=m.phone
        )
        assert report.totals()["profiles"] == 3
        assert m.subject not in repr(report) and m.phone not in repr(report)
        # scanned while the store still runs (the WAL must not keep the rows meanwhile)
        after_db, after_cache = await read(), await _redis_bytes(prefix)
    assert m.bystander.encode() in after_db
    for trace in m.subject_traces():
        left = [line[:300] for line in after_db.split(b"\n") if trace in line]
        assert not left, f"{trace!r} left in the database: {left}"
        assert trace not in after_cache, f"{trace!r} left in Redis"


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_postgres_and_redis_keep_no_byte_of_an_erased_subject(
    tmp_path: Path,
    prefix: str,
    pg_schema: tuple[str, str],
    encrypt: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn, schema = pg_schema
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", generate_key_entry("k1"))
    config = _config(tmp_path, prefix, "postgres", f'dsn = "{dsn}"\nschema = "{schema}"\n', encrypt)
    _migrate(config)

    async def read() -> bytes:
        return await _postgres_bytes(dsn, schema)

    asyncio.run(_erase_and_scan(config, prefix, read))


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_sqlite_file_wal_and_redis_keep_no_byte_of_an_erased_subject(
    tmp_path: Path, prefix: str, encrypt: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "vault.db"
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", generate_key_entry("k1"))
    config = _config(tmp_path, prefix, "sqlite", f'path = "{database}"\n', encrypt)
    _migrate(config)

    async def read() -> bytes:
        return _sqlite_bytes(database)

    asyncio.run(_erase_and_scan(config, prefix, read))
