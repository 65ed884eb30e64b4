"""The shared contract suite, unchanged, over the stacks deployments run, built exactly as
they are in production: by ``ccvault.open_store`` from settings.

* production: PostgreSQL, then the Redis cache, then PII encryption;
* embedded: SQLite, then PII encryption (no servers).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

import ccvault
from ccvault.cache import CachedProfileStore
from ccvault.crypto import EncryptedProfileStore, generate_key_entry
from ccvault.store import ProfileStore
from ccvault_contract_tests import ProfileStoreContract
from ccvault_postgres.testing import admin_dsn, create_database, drop_database, dsn_with_database

REDIS_URL = "redis://127.0.0.1:6379/0"
EMBEDDED_CONFIG = Path(__file__).resolve().parents[2] / "config" / "embedded.toml"
KEYRING = f"{generate_key_entry('old')},{generate_key_entry('new')}"


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    """A throw-away database on the shared PostgreSQL server (fails if it is unreachable)."""
    server = admin_dsn()
    name = asyncio.run(create_database(server))
    try:
        yield dsn_with_database(server, name)
    finally:
        asyncio.run(drop_database(server, name))


async def _drop_prefix(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class TestProductionStackContract(ProfileStoreContract):
    """Also runs the core-rule tests (``core_rule_tests``), with the in-memory provider's
    class: the deployed stack, through both wrappers."""

    provider_name = "postgres"
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    async def settings(
        self, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[ccvault.VaultSettings]:
        """One deployment's settings (a fresh Redis key prefix, dropped after)."""
        monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", KEYRING)
        prefix = f"ccvault-test:{uuid.uuid4().hex}:"
        try:
            yield ccvault.load_settings(
                store_provider="postgres",
                providers={"postgres": {"dsn": pg_dsn, "schema": "stack_contract"}},
                redis={"url": REDIS_URL, "key_prefix": prefix},
            )
        finally:
            await _drop_prefix(prefix)

    @pytest.fixture
    async def store(self, settings: ccvault.VaultSettings) -> AsyncIterator[ProfileStore]:
        await ccvault.migrate_schema(settings)  # the explicit step: opening never migrates
        async with ccvault.open_store(settings) as store:
            assert isinstance(store, EncryptedProfileStore)
            assert isinstance(store.inner, CachedProfileStore)
            yield store

    @pytest.fixture
    async def other_store(
        self, store: ProfileStore, settings: ccvault.VaultSettings
    ) -> AsyncIterator[ProfileStore]:
        """A second process of the same deployment: same database, same Redis key prefix."""
        async with ccvault.open_store(settings) as other:
            yield other


class TestEmbeddedStackContract(ProfileStoreContract):
    provider_name = "sqlite"
    core_rule_tests = False  # run by the in-memory provider and the production stack
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    def settings(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ccvault.VaultSettings:
        monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", KEYRING)
        return ccvault.load_settings(
            EMBEDDED_CONFIG,
            providers={"sqlite": {"path": str(tmp_path / "vault.db")}},
        )

    @pytest.fixture
    async def store(self, settings: ccvault.VaultSettings) -> AsyncIterator[ProfileStore]:
        async with ccvault.open_store(settings) as store:
            assert isinstance(store, EncryptedProfileStore)
            yield store

    @pytest.fixture
    async def other_store(
        self, store: ProfileStore, settings: ccvault.VaultSettings
    ) -> AsyncIterator[ProfileStore]:
        """A second process of the same deployment: same SQLite file."""
        async with ccvault.open_store(settings) as other:
            yield other
