"""Fixtures of the PostgreSQL provider's tests.

Every test session works in its own database on the shared server (created here, dropped at
the end), and every store in its own schema, so runs and tests never see each other's data.
An unreachable server makes the tests fail, never skip.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from ccvault.store import StoreRules
from ccvault_postgres import PostgresProfileStore, PostgresSettings
from ccvault_postgres.testing import (
    admin_dsn,
    create_database,
    drop_database,
    dsn_with_database,
)

StoreFactory = Callable[..., Awaitable[PostgresProfileStore]]

#: the clock of a ``timed_store``: the bulk-job tests generate their rows relative to it
TIMED_NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a fresh database for this session (fails if PostgreSQL is unreachable)."""
    server = admin_dsn()
    name = asyncio.run(create_database(server))
    try:
        yield dsn_with_database(server, name)
    finally:
        asyncio.run(drop_database(server, name))


def fresh_schema() -> str:
    return f"t_{uuid.uuid4().hex[:20]}"


@pytest.fixture
async def make_store(pg_dsn: str) -> AsyncIterator[StoreFactory]:
    """Factory of set-up stores, each in a fresh schema unless one is given, migrated first
    (``migrate=False``: not); all closed after."""
    opened: list[PostgresProfileStore] = []

    async def make(
        *,
        schema: str | None = None,
        rules: StoreRules | None = None,
        migrate: bool = True,
        **options: Any,
    ) -> PostgresProfileStore:
        settings = PostgresSettings(dsn=pg_dsn, db_schema=schema or fresh_schema(), **options)
        store = PostgresProfileStore(settings, rules=rules)
        if migrate:  # the explicit step `ccvault migrate` runs; setup() never changes the schema
            await store.migrate()
        await store.setup()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()


@pytest.fixture
async def store(make_store: StoreFactory) -> PostgresProfileStore:
    return await make_store()


@pytest.fixture
async def timed_store(make_store: StoreFactory) -> PostgresProfileStore:
    """A store whose connections run with ``statement_timeout = 3s`` (issue 17's bulk jobs)
    and whose clock stands still at :data:`TIMED_NOW`."""
    store = await make_store(statement_timeout_seconds=3)
    store.now = lambda: TIMED_NOW  # type: ignore[method-assign]
    async with store.connection() as conn:
        assert await conn.fetchval("SHOW statement_timeout") == "3s"
    return store


async def insert_profiles(
    conn: asyncpg.Connection, tenant: uuid.UUID, created_at: datetime, count: int
) -> None:
    """``count`` empty unverified profiles of ``tenant``, generated on the server."""
    await conn.execute(
        """
        INSERT INTO customer_profiles
            (tenant_id, id, customer_id, verification_level, created_at, updated_at)
        SELECT $1, gen_random_uuid(), gen_random_uuid(), 'unverified', $2, $2
        FROM generate_series(1, $3)
        """,
        tenant,
        created_at,
        count,
    )
