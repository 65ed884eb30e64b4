"""SQLite provider throughput beside raw aiosqlite, measured in the same run.

A profile of 50 fields x 20 versions each (1,000 field rows) in a WAL-mode file. Measured:

* ``get_by_customer_id`` (the whole profile: 50 ACTIVE fields, identities, assets, consents)
  against a raw aiosqlite single query for the same 50 ACTIVE field rows (tuples only),
  and against that raw query plus building the 50 ``ProfileField`` models;
* ``update_field`` (validate, supersede the ACTIVE version and insert, one ``BEGIN
  IMMEDIATE`` transaction) against the same two statements in a raw aiosqlite transaction.

Run: ``.venv/bin/python benchmarks/sqlite_bench.py [--reads N] [--writes N]``. Not a test:
figures depend on the machine; the ratios are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import aiosqlite

from ccvault.models import Channel, ProfileField
from ccvault_sqlite import SqliteProfileStore, codec

FIELDS = 50
VERSIONS = 20
ROUNDS = 15  # many short rounds: the best of each survives noise from a busy machine


async def timed(
    calls: list[Callable[[], Awaitable[object]]], count: int, rounds: int = ROUNDS
) -> list[float]:
    """Best per-call seconds of each of ``calls`` over ``rounds`` rounds of ``count`` calls.

    The calls take turns round by round, so load from elsewhere on the machine hits the
    store and its baseline alike.
    """
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            for _ in range(count):
                await call()
            best[i] = min(best[i], (time.perf_counter() - start) / count)
    return best


async def build(store: SqliteProfileStore) -> tuple[UUID, UUID, UUID]:
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, "+15550000000")
    start = datetime.now(UTC) - timedelta(days=30)
    for version in range(VERSIONS):
        current = await store.get_by_id(tenant, profile.id)
        assert current is not None
        for n in range(FIELDS):
            current.fields[f"field_{n:02d}"] = ProfileField(
                name=f"field_{n:02d}",
                value={"n": n, "version": version, "text": "x" * 40},
                source_metadata={"session": str(uuid4())},
                collected_at=start + timedelta(minutes=version),
                confidence=0.9,
            )
        await store.save(current)
    return tenant, profile.id, profile.customer_id


def rate(seconds: float) -> str:
    return f"{1 / seconds:>9,.0f} ops/s  ({seconds * 1e6:>8,.1f} us/op)"


async def main(reads: int, writes: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        async with SqliteProfileStore(path=path) as store:
            tenant, profile_id, customer_id = await build(store)
            found = await store.get_by_customer_id(tenant, customer_id)
            assert found is not None and len(found.fields) == FIELDS
            history = await store.get_by_customer_id(tenant, customer_id, include_history=True)
            assert history is not None
            assert sum(map(len, history.field_history.values())) == FIELDS * VERSIONS

            raw = await aiosqlite.connect(path, isolation_level=None)
            # the store's durability setting, so the write baseline commits the same way
            await raw.execute(f"PRAGMA synchronous = {store.settings.synchronous}")
            try:
                # the best single query for the 50 ACTIVE rows: through the partial
                # one-ACTIVE-per-name index, not a walk over all 1,000 versions
                sql = (
                    f"SELECT {codec.FIELD_SELECT} FROM fields INDEXED BY fields_one_active "
                    "WHERE tenant_id = ? AND profile_id = ? AND status = 'active'"
                )
                key = (str(tenant), str(profile_id))

                async def raw_read() -> object:
                    rows = list(await raw.execute_fetchall(sql, key))
                    assert len(rows) == FIELDS
                    return rows

                async def raw_read_models() -> object:
                    rows = await raw.execute_fetchall(sql, key)
                    return [codec.field_from_row(row) for row in rows]

                async def store_read() -> object:
                    return await store.get_by_customer_id(tenant, customer_id)

                async def store_read_history() -> object:
                    return await store.get_by_customer_id(tenant, customer_id, include_history=True)

                await timed([raw_read, raw_read_models, store_read], 20, rounds=1)  # warm up
                t_raw, t_raw_models, t_store = await timed(
                    [raw_read, raw_read_models, store_read], max(reads // ROUNDS, 1)
                )
                (t_history,) = await timed([store_read_history], 5, rounds=5)

                counter = iter(range(10**9))

                async def store_write() -> object:
                    n = next(counter)
                    return await store.update_field(
                        tenant,
                        profile_id,
                        ProfileField(name=f"field_{n % FIELDS:02d}", value={"n": n}),
                    )

                supersede = (
                    "UPDATE fields SET status = 'superseded', superseded_by_id = ?, "
                    "superseded_at = ?, updated_at = ? WHERE tenant_id = ? AND profile_id = ? "
                    "AND name = ? AND status = 'active'"
                )
                values = ", ".join(f"?{n}" for n in range(1, len(codec.FIELD_COLUMNS) + 3))
                insert = (
                    f"INSERT INTO fields (tenant_id, profile_id, {codec.FIELD_SELECT}, seq) "
                    f"VALUES ({values}, "
                    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM fields WHERE tenant_id = ?1))"
                )

                async def raw_write() -> object:
                    n = next(counter)
                    item = ProfileField(name=f"field_{n % FIELDS:02d}", value={"n": n})
                    now = codec.ts(datetime.now(UTC))
                    await raw.execute("BEGIN IMMEDIATE")
                    await raw.execute(supersede, (str(item.id), now, now, *key, item.name))
                    await raw.execute(insert, (*key, *codec.field_params(item)))
                    await raw.execute("COMMIT")
                    return item.id

                await timed([raw_write, store_write], 20, rounds=1)  # warm up
                t_raw_write, t_store_write = await timed(
                    [raw_write, store_write], max(writes // ROUNDS, 1)
                )
                for name in (f"field_{n:02d}" for n in range(FIELDS)):
                    versions = await store.get_field_history(tenant, profile_id, name)
                    assert sum(v.status.value == "active" for v in versions) == 1
            finally:
                await raw.close()

    print(f"SQLite provider benchmark: {FIELDS} fields x {VERSIONS} versions, WAL file")
    print(f"  raw aiosqlite, 50 active rows (tuples) {rate(t_raw)}")
    print(f"  raw aiosqlite + 50 ProfileField models {rate(t_raw_models)}")
    print(f"  get_by_customer_id                     {rate(t_store)}")
    print(f"  get_by_customer_id(include_history)    {rate(t_history)}")
    print(f"  raw aiosqlite supersede+insert txn     {rate(t_raw_write)}")
    print(f"  update_field                           {rate(t_store_write)}")
    print("ratios (time per op, store / raw baseline):")
    print(f"  get_by_customer_id / raw single query      {t_store / t_raw:6.2f}x")
    print(f"  get_by_customer_id / raw query + models    {t_store / t_raw_models:6.2f}x")
    print(f"  update_field / raw supersede+insert txn    {t_store_write / t_raw_write:6.2f}x")
    print(f"  (history read of 1,000 rows / plain read   {t_history / t_store:6.2f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--writes", type=int, default=1500)
    args = parser.parse_args()
    asyncio.run(main(args.reads, args.writes))
