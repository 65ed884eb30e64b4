"""Fixtures of the PostgreSQL provider's tests.

Every test session works in its own database on the shared server (created here, dropped at
the end), and every store in its own schema, so runs and tests never see each other's data.
An unreachable server makes the tests fail, never skip.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

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
