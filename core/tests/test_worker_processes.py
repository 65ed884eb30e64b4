"""Several real ``ccvault worker`` processes on one database never process a tenant twice.

Run on a shared SQLite file (claims in lock files) and on the real PostgreSQL server (claims
in the real Redis). Every process sweeps once (``--once``) and logs what it did; across all of
them each tenant is processed exactly once and every stale field is expired exactly once.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

import ccvault
from ccvault.models import Channel, ProfileField, utcnow
from ccvault_postgres.testing import admin_dsn, dsn_with_database

REDIS_URL = "redis://127.0.0.1:6379/0"
WORKERS = 3
TENANTS = 8
PROCESSED = re.compile(r"tenant=([0-9a-f-]{36}) processed expired=(\d+)")


@pytest.fixture
def prefix() -> Iterator[str]:
    value = f"test-workers-{uuid.uuid4().hex}:"
    yield value

    async def cleanup() -> None:
        client = Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(match=f"{value}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    asyncio.run(cleanup())


@pytest.fixture(params=["sqlite", "postgres", "postgres_claims"])
def config(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> Iterator[Path]:
    """SQLite embedded style (no cache, claims in files); PostgreSQL with the Redis cache
    and claims in Redis; PostgreSQL without the cache, claims in its own table."""
    schema = f"t_workers_{uuid.uuid4().hex[:16]}"
    dsn = dsn_with_database(admin_dsn(), "test")
    provider = "sqlite" if request.param == "sqlite" else "postgres"
    cache = request.param == "postgres"
    if request.param == "sqlite":
        options = (
            f'[providers.sqlite]\npath = "{tmp_path / "vault.db"}"\n'
            f'[worker]\nlease = "file"\nlease_dir = "{tmp_path / "leases"}"\n'
        )
    else:
        options = f'[providers.postgres]\ndsn = "{dsn}"\nschema = "{schema}"\n'
    path = tmp_path / "vault.toml"
    path.write_text(
        "[profile]\n"
        f'store_provider = "{provider}"\n'
        f"cache_enabled = {'true' if cache else 'false'}\n"
        "auto_encrypt_pii = false\n"
        "expire_check_interval_seconds = 60\n"
        f'[redis]\nurl = "{REDIS_URL}"\nkey_prefix = "{prefix}"\n' + options
    )
    # the explicit step a deployment runs before its processes start
    asyncio.run(ccvault.migrate_schema(ccvault.load_settings(path)))
    yield path
    if provider == "postgres":

        async def drop() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop())


async def _seed(config: Path) -> dict[uuid.UUID, int]:
    stale: dict[uuid.UUID, int] = {}
    past = utcnow() - timedelta(minutes=1)
    async with ccvault.open_store(ccvault.load_settings(config)) as store:
        for n in range(TENANTS):
            tenant = uuid.uuid4()
            pid = (await store.get_or_create(tenant, Channel.WEB, f"user-{n}")).id
            for i in range(n + 1):
                await store.update_field(
                    tenant, pid, ProfileField(name=f"otp_{i}", value=i, expires_at=past)
                )
            stale[tenant] = n + 1
    return stale


def _worker_once(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ccvault", "-c", str(config), "worker", "--once", "--no-metrics"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _logs(processes: list[subprocess.Popen[str]]) -> list[str]:
    logs = []
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        logs.append(err)
    return logs


def test_concurrent_worker_processes_split_the_tenants(config: Path) -> None:
    stale = asyncio.run(_seed(config))
    logs = _logs([_worker_once(config) for _ in range(WORKERS)])
    processed = [
        (uuid.UUID(m.group(1)), int(m.group(2))) for log in logs for m in PROCESSED.finditer(log)
    ]
    counts = Counter(tenant for tenant, _ in processed)
    assert set(counts) == set(stale), "some tenant was not processed"
    assert all(n == 1 for n in counts.values()), f"processed twice: {counts}"
    assert dict(processed) == stale  # every stale field expired once, by the one claimant

    async def check() -> None:
        async with ccvault.open_store(ccvault.load_settings(config)) as store:
            for tenant, n in stale.items():
                counted = await store.count_items_by_status(tenant)
                assert counted["fields"]["expired"] == n
                assert counted["fields"]["active"] == 0

    asyncio.run(check())


def test_a_later_worker_process_in_the_same_interval_sweeps_no_tenant_again(
    config: Path,
) -> None:
    """Each lease keeps its claims one interval after the worker is done, even once the
    process has exited (PostgreSQL session locks did not: a second run swept again)."""
    stale = asyncio.run(_seed(config))
    [first] = _logs([_worker_once(config)])
    assert {uuid.UUID(m.group(1)) for m in PROCESSED.finditer(first)} == set(stale)
    [second] = _logs([_worker_once(config)])
    assert PROCESSED.findall(second) == []
    assert second.count("skipped (claimed by another worker)") == len(stale)
