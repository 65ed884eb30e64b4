"""Whole-profile reads take a fixed number of statements, however many fields there are."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from ccvault.models import Channel, ProfileAsset, ProfileField, SourceType
from ccvault_sqlite import SqliteProfileStore


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SqliteProfileStore]:
    async with SqliteProfileStore(path=db) as s:
        yield s


async def count_statements(store: SqliteProfileStore, call: Callable[[], Awaitable[Any]]) -> int:
    """Statements run on both connections (writes, and reads on the read connection)."""
    statements: list[str] = []
    connections = {id(c): c for c in (store.connection, store.read_connection)}.values()
    for connection in connections:
        await connection.set_trace_callback(statements.append)
    try:
        await call()
    finally:
        for connection in connections:
            await connection.set_trace_callback(None)
    return len(statements)


async def profile_with(store: SqliteProfileStore, names: int, versions: int) -> tuple[UUID, UUID]:
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, f"visitor-{uuid4()}")
    start = datetime.now(UTC) - timedelta(days=1)
    for v in range(versions):
        current = await store.get_by_id(tenant, profile.id)
        assert current is not None
        for n in range(names):
            current.fields[f"f{n}"] = ProfileField(
                name=f"f{n}", value=[n, v], collected_at=start + timedelta(seconds=v)
            )
        await store.save(current)
    for n in range(min(names, 5)):
        await store.add_asset(
            tenant,
            profile.id,
            ProfileAsset(
                name=f"doc{n}", asset_type="pdf", storage_provider="s3", storage_path=f"s3://b/{n}"
            ),
        )
    return tenant, profile.id


async def read_counts(
    store: SqliteProfileStore, tenant: UUID, profile_id: UUID, include_history: bool
) -> list[int]:
    """Statements run by each whole-profile read of this profile."""
    customer = await store.get_by_id(tenant, profile_id)
    assert customer is not None
    identity = customer.channel_identities[0]
    return [
        await count_statements(
            store, lambda: store.get_by_id(tenant, profile_id, include_history=include_history)
        ),
        await count_statements(
            store,
            lambda: store.get_by_customer_id(
                tenant, customer.customer_id, include_history=include_history
            ),
        ),
        await count_statements(
            store,
            lambda: store.get_by_channel_identity(
                tenant, identity.channel, identity.channel_user_id, include_history=include_history
            ),
        ),
        await count_statements(store, lambda: store.export_profile(tenant, profile_id)),
    ]


@pytest.mark.parametrize("include_history", [False, True])
async def test_profile_reads_are_bounded_by_a_constant(
    store: SqliteProfileStore, include_history: bool
) -> None:
    small_tenant, small = await profile_with(store, names=2, versions=1)
    big_tenant, big = await profile_with(store, names=50, versions=4)
    small_profile = await store.get_by_id(small_tenant, small, include_history=include_history)
    big_profile = await store.get_by_id(big_tenant, big, include_history=include_history)
    assert small_profile is not None and big_profile is not None
    assert len(big_profile.fields) == 50
    if include_history:
        assert sum(len(v) for v in big_profile.field_history.values()) == 200

    counts = {}
    for label, tenant, profile_id in (("small", small_tenant, small), ("big", big_tenant, big)):
        counts[label] = await read_counts(store, tenant, profile_id, include_history)
    assert counts["small"] == counts["big"]
    # the profile, its identities, consents, fields and assets: one UNION ALL statement
    # (the export reads the merge log entries naming the profile with a second one)
    assert counts["big"] == [1, 1, 1, 2]


async def test_saving_many_fields_is_a_bounded_number_of_statements(
    store: SqliteProfileStore,
) -> None:
    """executemany runs one statement per row, so count round trips through the lock."""
    tenant, profile_id = await profile_with(store, names=3, versions=1)
    current = await store.get_by_id(tenant, profile_id)
    assert current is not None
    calls: list[str] = []
    connection = store.connection
    original_execute, original_many = connection.execute, connection.executemany

    def spy(method: Callable[..., Any], label: str) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls.append(label)
            return method(*args, **kwargs)

        return wrapped

    for n in range(40):
        current.fields[f"extra{n}"] = ProfileField(name=f"extra{n}", value=n)
    try:
        connection.execute = spy(original_execute, "execute")  # type: ignore[method-assign]
        connection.executemany = spy(original_many, "many")  # type: ignore[method-assign]
        await store.save(current)
    finally:
        del connection.execute, connection.executemany
    assert len(calls) <= 12


async def test_derivation_chain_is_one_statement(store: SqliteProfileStore) -> None:
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "v-chain")
    parent: UUID | None = None
    for n in range(8):
        item = ProfileField(
            name=f"step{n}",
            value=n,
            source_item_id=parent,
            source_item_type=None if parent is None else SourceType.PROFILE_FIELD,
        )
        parent = await store.update_field(tenant, profile.id, item)
    assert parent is not None
    statements = await count_statements(
        store, lambda: store.get_derivation_chain(tenant, parent, "profile_field")
    )
    chain = await store.get_derivation_chain(tenant, parent, "profile_field")
    assert [entry["name"] for entry in chain] == [f"step{n}" for n in range(8)]
    assert statements == 1
