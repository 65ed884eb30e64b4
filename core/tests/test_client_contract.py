"""The shared contract suite, unchanged, through :class:`ccvault.client.RemoteProfileStore`
against a real ``ccvault serve`` process: the HTTP API is complete and faithful.

The suite uses a fresh random tenant per test and the server takes the tenant from the API
key, so the client is given ``key_for_tenant``: a key minted per tenant in the server's key
file (the admin helper of :class:`ccvault.server.testing.ServerProcess`). ``other_store`` is
a second client (its own connection pool and keys) on the same server.

Two deployments are served: the embedded default (SQLite + PII encryption) and production
(PostgreSQL + Redis cache + PII encryption).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import UUID

import pytest
from redis.asyncio import Redis

from ccvault.client import RemoteProfileStore
from ccvault.crypto import generate_key_entry
from ccvault.server.testing import ServerProcess, embedded_config, running_server
from ccvault.store import ProfileStore
from ccvault_contract_tests import ProfileStoreContract
from ccvault_contract_tests.capabilities import HIGH_CONCURRENCY, LARGE_VALUES, NUL_CHARACTERS

REDIS_URL = "redis://127.0.0.1:6379/0"
# the suite freezes the store's clock in some tests: the test servers honour the client's
_SERVER_ARGS = ("--max-body-bytes", str(16 * 1024 * 1024), "--trust-client-clock")


def _minter(server: ServerProcess) -> dict[UUID, str]:
    class Keys(dict[UUID, str]):
        def __missing__(self, tenant: UUID) -> str:
            token = server.mint(tenant)
            self[tenant] = token
            return token

    return Keys()


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("client-embedded")
    env = {"PROFILE_PII_ENCRYPTION_KEY": f"{generate_key_entry('a')},{generate_key_entry('b')}"}
    with running_server(
        embedded_config(directory), directory, env=env, args=_SERVER_ARGS
    ) as server:
        yield server


class _RemoteContract(ProfileStoreContract):
    server_fixture = ""
    # argument checks and requirement evaluation run in the client's own public layer, before
    # any request: they test nothing of the server and already run for inmemory and the stack
    core_rule_tests = False

    @pytest.fixture
    def server(self, request: pytest.FixtureRequest) -> ServerProcess:
        found: ServerProcess = request.getfixturevalue(self.server_fixture)
        return found

    @pytest.fixture
    async def store(self, server: ServerProcess) -> AsyncIterator[ProfileStore]:
        async with RemoteProfileStore(server.base_url, key_for_tenant=_minter(server)) as store:
            yield store

    @pytest.fixture
    async def other_store(
        self, store: ProfileStore, server: ServerProcess
    ) -> AsyncIterator[ProfileStore]:
        async with RemoteProfileStore(server.base_url, key_for_tenant=_minter(server)) as other:
            yield other


# The capabilities are those of the provider the server runs. Newer suites take them from
# the provider's registration (provider_name); older ones from the class attribute.
_BY_NAME = hasattr(ProfileStoreContract, "provider_name")


class TestRemoteEmbeddedContract(_RemoteContract):
    if _BY_NAME:
        provider_name = "sqlite"
    else:
        capabilities = frozenset({LARGE_VALUES, HIGH_CONCURRENCY, NUL_CHARACTERS})
    known_gaps: dict[str, str] = {}
    server_fixture = "embedded_server"


@pytest.fixture(scope="module")
def production_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from ccvault_postgres.testing import (
        admin_dsn,
        create_database,
        drop_database,
        dsn_with_database,
    )

    directory = tmp_path_factory.mktemp("client-production")
    admin = admin_dsn()
    name = asyncio.run(create_database(admin))
    prefix = f"ccvault-client-test:{uuid.uuid4().hex}:"
    config = directory / "prod.toml"
    config.write_text(
        "[profile]\n"
        'store_provider = "postgres"\n'
        "cache_enabled = true\n"
        "auto_encrypt_pii = true\n"
        "[providers.postgres]\n"
        f'dsn = "{dsn_with_database(admin, name)}"\n'
        "[redis]\n"
        f'url = "{REDIS_URL}"\n'
        f'key_prefix = "{prefix}"\n',
        encoding="utf-8",
    )
    env = {"PROFILE_PII_ENCRYPTION_KEY": generate_key_entry("k1")}
    try:
        with running_server(config, directory, env=env, args=_SERVER_ARGS) as server:
            yield server
    finally:
        asyncio.run(drop_database(admin, name))
        asyncio.run(_drop_prefix(prefix))


async def _drop_prefix(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class TestRemoteProductionContract(_RemoteContract):
    if _BY_NAME:
        provider_name = "postgres"
    else:
        capabilities = frozenset({LARGE_VALUES, HIGH_CONCURRENCY})
    known_gaps: dict[str, str] = {}
    server_fixture = "production_server"


def test_one_key_client_refuses_other_tenants(
    embedded_server: ServerProcess, tmp_path: Path
) -> None:
    from ccvault.client import WrongTenantError
    from ccvault.models import Channel

    tenant = uuid.uuid4()
    token = embedded_server.mint(tenant, "read,write")

    async def run() -> None:
        async with RemoteProfileStore(embedded_server.base_url, api_key=token) as store:
            profile = await store.get_or_create(tenant, Channel.WEB, "one-key")
            assert profile.tenant_id == tenant
            assert await store.get_by_id(tenant, profile.id) == profile
            with pytest.raises(WrongTenantError):
                await store.get_by_id(uuid.uuid4(), profile.id)

    asyncio.run(run())
