"""Faults on a PRIVATE PostgreSQL server (a temporary initdb cluster on a free loopback
port): the shared server on 5432 is never touched."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from ccvault import errors
from ccvault.models import Channel, ItemStatus, ProfileAsset, ProfileField
from ccvault_postgres import PostgresProfileStore, PostgresSettings
from ccvault_postgres.testing import PrivateServer, chain_problems, private_server

# one private server per module: keep the module on one pytest-xdist worker (make test)
pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("postgres-private-server")]


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateServer]:
    with private_server() as started:
        yield started


async def _until(condition: Callable[[], bool], deadline_seconds: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``deadline_seconds``."""
    deadline = time.monotonic() + deadline_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_server_restart_mid_load(server: PrivateServer) -> None:
    store = PostgresProfileStore(
        PostgresSettings(
            dsn=server.dsn,
            db_schema="restart",
            min_pool_size=4,
            max_pool_size=8,
            connect_timeout_seconds=2,
            pool_acquire_timeout_seconds=5,
        )
    )
    await store.migrate()  # the explicit step; setup() never changes the schema
    await store.setup()
    tenant = uuid.uuid4()
    profiles = [(await store.get_or_create(tenant, Channel.WEB, f"user{i}")).id for i in range(4)]
    acknowledged: dict[tuple[uuid.UUID, str], list[uuid.UUID]] = {}
    assets_acknowledged: list[uuid.UUID] = []
    failures: list[errors.ProviderUnavailableError] = []
    successes = 0
    stop = asyncio.Event()

    async def worker(number: int) -> None:
        nonlocal successes
        step = 0
        while not stop.is_set():
            step += 1
            profile = profiles[(number + step) % len(profiles)]
            name = f"f{step % 3}"
            try:
                if step % 7 == 0:
                    # a multi-statement transaction: lock, supersede, insert
                    asset = ProfileAsset(
                        name="doc", asset_type="pdf", storage_provider="s3", storage_path=f"{step}"
                    )
                    await store.add_asset(tenant, profile, asset, supersede_existing=True)
                    assets_acknowledged.append(asset.id)
                elif step % 5 == 0:
                    assert await store.get_by_id(tenant, profile) is not None
                else:
                    field = ProfileField(name=name, value={"worker": number, "step": step})
                    new_id = await store.update_field(tenant, profile, field)
                    acknowledged.setdefault((profile, name), []).append(new_id)
                successes += 1
            except errors.ProviderUnavailableError as exc:
                # the only error allowed; any other one fails the test through gather()
                failures.append(exc)
                await asyncio.sleep(0.01)  # client back-off while the server is away

    workers = asyncio.gather(*(worker(n) for n in range(8)))
    try:
        await _until(lambda: successes >= 100, 60, "load to build up")
        await server.restart("fast")  # terminates every session mid-statement
        after_restart = successes
        await _until(lambda: successes >= after_restart + 200, 60, "the pool to recover")
    finally:
        stop.set()
        await workers

    assert failures, "the restart interrupted no call"
    assert all(isinstance(f, errors.ProviderUnavailableError) for f in failures)

    # nothing half-written: per name one ACTIVE version and an unbroken chain; every
    # acknowledged write is there
    for profile in profiles:
        found = await store.get_by_id(tenant, profile, include_history=True)
        assert found is not None
        for name, versions in found.field_history.items():
            assert chain_problems(versions) == [], (profile, name)
            assert set(acknowledged.get((profile, name), [])) <= {v.id for v in versions}
        active_docs = [a for a in found.asset_history if a.status is ItemStatus.ACTIVE]
        assert len(active_docs) <= 1
    stored_assets = {
        a.id
        for p in profiles
        for a in (await store.get_by_id(tenant, p, include_history=True)).asset_history  # type: ignore[union-attr]
    }
    assert set(assets_acknowledged) <= stored_assets
    await store.aclose()


async def test_server_down_then_back(server: PrivateServer) -> None:
    store = PostgresProfileStore(
        PostgresSettings(
            dsn=server.dsn,
            db_schema="down",
            min_pool_size=2,
            max_pool_size=4,
            connect_timeout_seconds=2,
            pool_acquire_timeout_seconds=3,
        )
    )
    await store.migrate()  # the explicit step; setup() never changes the schema
    await store.setup()
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "down")
    server.stop("fast")
    try:
        with pytest.raises(errors.ProviderUnavailableError):
            await store.update_field(tenant, profile.id, ProfileField(name="x", value=1))
        with pytest.raises(errors.ProviderUnavailableError):
            await store.get_by_id(tenant, profile.id)
    finally:
        server.start()
    # the same store, without re-opening, serves again
    await store.update_field(tenant, profile.id, ProfileField(name="x", value=2))
    stored = await store.get_field(tenant, profile.id, "x")
    assert stored is not None and stored.value == 2
    await store.aclose()
