"""SQLite provider throughput beside raw aiosqlite running the store's own SQL, in one run.

    .venv/bin/python benchmarks/sqlite_bench.py [--seconds 5] [--pairs 30] [--quick]
        [--no-results] [--only read|crypto|missing|depth|size|chain|tenant]

WAL-mode files in a temporary folder. Every baseline (but the first of figure 5, the two
queries the issue's goal names) does the work the store asks of SQLite and nothing else:
the statements are captured with the connection's trace callback while the store runs the
operation once (``store.connection`` is public for diagnostics), and the baseline runs
exactly those statements, on its own connection with the store's pragmas, and returns the
rows as tuples. Figures (paired interleaved rounds, see ``_common``):

1. ``get_by_customer_id`` of 50 ACTIVE fields (x 20 versions stored) vs raw: goal >= 0.7x;
2. the same with ``include_history`` (1,000 versions) vs raw: goal >= 0.7x;
3. ``update_field`` vs a raw ``BEGIN IMMEDIATE``, the store's supersede UPDATE and INSERT,
   ``COMMIT`` (checked statement by statement against the store's, literals aside): info;
4. embedded stack: read through ``EncryptedProfileStore`` (every value sealed) vs the same
   store without it: goal >= 0.85x;
5. ``get_missing_fields`` (50 requirements) vs the two raw queries it needs, as a
   hand-written client sends them (the scenario's requirements, and the check columns of
   the agent's enabled definitions; the same two as ``postgres_bench.py``): goal <= 1.5x
   cost; for information, vs the store's own one statement replayed;
6. scale curves: history depth 0/10/100 versions per field, profile size 10/50/200 fields,
   tenant size 1k/10k/100k profiles (100/1k with ``--quick``; the other profiles bulk-loaded
   with the store's own statements), derivation chain depth 1/10/50.

Writes its table to ``benchmarks/RESULTS.md`` ("## Store throughput") unless
``--no-results``. Not a test: nothing here runs under ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiosqlite
from _common import (
    FIELDS,
    REQUIREMENTS,
    Report,
    Spread,
    bench_field,
    encryption_pair,
    interleaved,
    missing_fields_setup,
    paired,
    plot,
    ratio,
    write_results,
)

from ccvault.models import Channel, ChannelIdentity, CustomerProfile, ProfileField, SourceType
from ccvault.store_rules import StoreRules
from ccvault_sqlite import SqliteProfileStore, SqliteSettings, codec
from ccvault_sqlite import store as sqlite_store

VERSIONS = 20


async def captured(store: SqliteProfileStore, call: Callable[[], Awaitable[Any]]) -> list[str]:
    """The SQL statements the store runs for ``call()`` (with their parameters inlined), on
    its write connection and its read connection."""
    seen: list[str] = []
    connections = {id(c): c for c in (store.connection, store.read_connection)}.values()
    for connection in connections:
        await connection.set_trace_callback(seen.append)
    try:
        await call()
    finally:
        for connection in connections:
            await connection.set_trace_callback(None)
    return seen


def new_store(path: Path) -> SqliteProfileStore:
    """A store on ``path``, created and migrated on open (a benchmark's own file)."""
    return SqliteProfileStore(SqliteSettings(path=str(path), migrate_on_start=True))


_LITERAL = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b|\bNULL\b|\?\d*")


def shape(sql: str) -> str:
    """A statement with every literal and parameter replaced by ``?`` and blanks collapsed."""
    return " ".join(_LITERAL.sub("?", sql).split())


async def raw_connection(store: SqliteProfileStore) -> aiosqlite.Connection:
    """A second connection to the store's file with the store's pragmas."""
    raw = await aiosqlite.connect(store.path, isolation_level=None)
    await raw.execute(f"PRAGMA busy_timeout = {store.settings.busy_timeout_ms}")
    await raw.execute("PRAGMA foreign_keys = ON")
    await raw.execute(f"PRAGMA synchronous = {store.settings.synchronous}")
    return raw


async def hop_cost(raw: aiosqlite.Connection, rounds: int = 5, calls: int = 200) -> float:
    """Microseconds per ``SELECT 1`` through aiosqlite (median of ``rounds``): the thread
    hop every statement pays, baseline and store alike. On a VM it is mostly the wake-up
    of the worker thread and of the event loop on the other CPU, and it moves from day to
    day, which moves every ratio against a raw statement with it."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            await raw.execute_fetchall("SELECT 1")
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def per_call(base: Spread, cand: Spread, hop: float) -> str:
    """The detail of a figure: the medians as microseconds per call, and the hop."""
    return (
        f"raw {1e6 / base.median:,.0f} us, store {1e6 / cand.median:,.0f} us per call; "
        f"thread hop {hop:.0f} us"
    )


def replay(raw: aiosqlite.Connection, statements: list[str]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        rows: list[Any] = []
        for sql in statements:
            rows.extend(await raw.execute_fetchall(sql))
        return rows

    return run


async def add_versions(
    store: SqliteProfileStore, tenant: UUID, profile_id: UUID, versions: int
) -> None:
    """``versions`` rounds of saving all 50 fields anew: each round supersedes the last."""
    start = datetime.now(UTC) - timedelta(days=30)
    for version in range(versions):
        current = await store.get_by_id(tenant, profile_id)
        assert current is not None
        for n in range(FIELDS):
            item = bench_field(n, version)
            current.fields[item.name] = item.model_copy(
                update={"collected_at": start + timedelta(minutes=version)}
            )
        await store.save(current)


async def bench_reads(store: SqliteProfileStore, report: Report, args: argparse.Namespace) -> None:
    tenant = uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, "+15550000000")
    await add_versions(store, tenant, profile.id, VERSIONS)
    customer = profile.customer_id
    history = await store.get_by_customer_id(tenant, customer, include_history=True)
    assert history is not None
    assert sum(map(len, history.field_history.values())) == FIELDS * VERSIONS

    read_sql = await captured(store, lambda: store.get_by_customer_id(tenant, customer))
    history_sql = await captured(
        store, lambda: store.get_by_customer_id(tenant, customer, include_history=True)
    )
    print(f"  the store runs {len(read_sql)} statement(s) per read: replayed as the baseline")
    raw = await raw_connection(store)
    try:
        raw_read, raw_history = replay(raw, read_sql), replay(raw, history_sql)
        assert len(await raw_read()) > FIELDS

        print(f"\n[1] get_by_customer_id, {FIELDS} fields x {VERSIONS} versions, vs raw")
        base, cand, r = await paired(
            raw_read,
            lambda: store.get_by_customer_id(tenant, customer),
            args.pairs,
            args.seconds / args.pairs / 2,
        )
        print(f"  raw {base.median:9,.0f}/s   get_by_customer_id {cand.median:9,.0f}/s")
        hop = await hop_cost(raw)
        detail = per_call(base, cand, hop)
        report.figure("sqlite read vs raw (same SQL)", r, ">= 0.7", detail=detail)

        print(f"\n[2] get_by_customer_id(include_history), {FIELDS * VERSIONS} versions, vs raw")
        base, cand, r = await paired(
            raw_history,
            lambda: store.get_by_customer_id(tenant, customer, include_history=True),
            args.pairs,
            args.seconds / args.pairs / 2,
            warmup=2,
        )
        print(f"  raw {base.median:9,.0f}/s   include_history {cand.median:9,.0f}/s")
        detail = per_call(base, cand, hop)
        report.figure("sqlite history read (1,000 versions) vs raw", r, ">= 0.7", detail=detail)

        print("\n[3] update_field vs raw BEGIN IMMEDIATE / UPDATE / INSERT / COMMIT")
        await bench_update(store, raw, tenant, profile.id, report, args)
    finally:
        await raw.close()


SUPERSEDE = (
    "UPDATE fields SET status = 'superseded', superseded_by_id = ?, superseded_at = ?, "
    "updated_at = ? WHERE tenant_id = ? AND profile_id = ? AND name = ? AND status = 'active'"
)


def insert_sql() -> str:
    values = ", ".join(f"?{n}" for n in range(1, len(codec.FIELD_COLUMNS) + 3))
    return (
        f"INSERT INTO fields (tenant_id, profile_id, {codec.FIELD_SELECT}, seq) "
        f"SELECT {values}, (SELECT COALESCE(MAX(seq), 0) + 1 FROM fields WHERE tenant_id = ?1) "
        "WHERE EXISTS "
        "(SELECT 1 FROM profiles WHERE tenant_id = ?1 AND id = ?2 AND deleted_at IS NULL)"
    )


async def bench_update(
    store: SqliteProfileStore,
    raw: aiosqlite.Connection,
    tenant: UUID,
    profile_id: UUID,
    report: Report,
    args: argparse.Namespace,
) -> None:
    key = (str(tenant), str(profile_id))
    insert = insert_sql()
    counter = iter(range(10**9))

    async def raw_update() -> None:
        n = next(counter)
        item = ProfileField(name=f"field_{n % FIELDS:02d}", value={"n": n})
        now = codec.ts(datetime.now(UTC))
        await raw.execute("BEGIN IMMEDIATE")
        await raw.execute(SUPERSEDE, (str(item.id), now, now, *key, item.name))
        cursor = await raw.execute(insert, (*key, *codec.field_params(item)))
        assert cursor.rowcount == 1
        await raw.execute("COMMIT")

    async def store_update() -> None:
        n = next(counter)
        item = ProfileField(name=f"field_{n % FIELDS:02d}", value={"n": n})
        await store.update_field(tenant, profile_id, item)

    # the baseline must run the store's statements: compare them, literals aside
    ours = [shape(s) for s in await captured(store, store_update)]
    theirs: list[str] = []
    await raw.set_trace_callback(theirs.append)
    await raw_update()
    await raw.set_trace_callback(None)
    same = ours == [shape(s) for s in theirs]
    if not same:
        print("  WARNING: the raw update no longer runs the store's statements:")
        for line in ours:
            print(f"    store: {line[:150]}")
    base, cand, r = await paired(
        raw_update, store_update, args.pairs, args.seconds / args.pairs / 2
    )
    print(f"  raw transaction {base.median:9,.0f}/s   update_field {cand.median:9,.0f}/s")
    report.figure(
        "sqlite update_field vs raw one transaction",
        r,
        detail="same statements" if same else "baseline statements DIFFER from the store's",
    )
    for n in range(FIELDS):
        versions = await store.get_field_history(tenant, profile_id, f"field_{n:02d}")
        assert sum(v.status.value == "active" for v in versions) == 1


async def bench_encryption(
    store: SqliteProfileStore, report: Report, args: argparse.Namespace
) -> None:
    print("\n[4] embedded stack: read with every value sealed vs the plaintext store")
    plain, sealed = await encryption_pair(store)
    base, cand, r = await paired(plain, sealed, args.pairs, args.seconds / args.pairs / 2)
    print(f"  plaintext {base.median:9,.0f}/s   encrypted {cand.median:9,.0f}/s")
    report.figure("sqlite encrypted read vs plaintext", r, ">= 0.85")


# the two queries get_missing_fields needs, as a hand-written client would send them (the
# same two as postgres_bench.py's): the scenario's requirements, whole (missing ones are
# returned), and of the agent's enabled definitions what the check reads
RAW_REQUIREMENTS = (
    "SELECT * FROM scenario_requirements WHERE tenant_id = ? AND scenario_id = ? "
    "AND step_id IS NULL"
)
RAW_DEFINITIONS = (
    "SELECT name, required_verification, freshness_seconds FROM field_definitions "
    "WHERE tenant_id = ? AND agent_id = ? AND enabled = 1"
)


async def bench_missing(
    store: SqliteProfileStore, report: Report, args: argparse.Namespace
) -> None:
    print("\n[5] get_missing_fields, 50 requirements, vs the two raw queries it needs")
    tenant, agent, scenario, profile = await missing_fields_setup(store)
    statements = await captured(store, lambda: store.get_missing_fields(tenant, profile, scenario))
    print(f"  the store runs {len(statements)} statement(s): replayed as the second baseline")
    raw = await raw_connection(store)
    try:
        requirements, definitions = (str(tenant), str(scenario)), (str(tenant), str(agent))
        assert len(await raw.execute_fetchall(RAW_REQUIREMENTS, requirements)) == REQUIREMENTS
        assert len(await raw.execute_fetchall(RAW_DEFINITIONS, definitions)) == REQUIREMENTS

        async def raw_queries() -> Any:
            return (
                await raw.execute_fetchall(RAW_REQUIREMENTS, requirements),
                await raw.execute_fetchall(RAW_DEFINITIONS, definitions),
            )

        base, cand, r = await paired(
            raw_queries,
            lambda: store.get_missing_fields(tenant, profile, scenario),
            args.pairs,
            args.seconds / args.pairs / 2,
        )
        hop = await hop_cost(raw)
        print(f"  raw queries {base.median:9,.0f}/s   get_missing_fields {cand.median:9,.0f}/s")
        report.figure(
            "sqlite get_missing_fields vs its 2 raw queries",
            r.inverse(),
            "<= 1.5",
            cost=True,
            detail=per_call(base, cand, hop),
        )
        # for information: the store's own statement (requirements joined with the checks,
        # one thread hop) replayed, so the ratio is the store's work beyond it
        base, cand, r = await paired(
            replay(raw, statements),
            lambda: store.get_missing_fields(tenant, profile, scenario),
            args.pairs,
            args.seconds / args.pairs / 2,
        )
        report.figure(
            "sqlite get_missing_fields vs its own statement replayed",
            r.inverse(),
            cost=True,
            detail=per_call(base, cand, hop),
        )
    finally:
        await raw.close()


async def bench_depth(store: SqliteProfileStore, report: Report, args: argparse.Namespace) -> None:
    print("\n[6a] scale: get_by_customer_id with 0 / 10 / 100 versions per field")
    tenant = uuid4()
    ops = {}
    for depth in (0, 10, 100):
        person = await store.get_or_create(tenant, Channel.WEB, f"depth-{depth}")
        await add_versions(store, tenant, person.id, depth + 1)
        customer = person.customer_id

        def read(customer: UUID = customer) -> Awaitable[Any]:
            return store.get_by_customer_id(tenant, customer)

        ops[depth] = read
    rates = await interleaved(
        {str(d): op for d, op in ops.items()}, args.pairs, args.seconds / args.pairs / 3
    )
    for depth in ops:
        report.point(
            "sqlite read vs history depth (versions per field)", depth, Spread.of(rates[str(depth)])
        )
        print(f"  {depth:3d} versions: {Spread.of(rates[str(depth)]).median:9,.0f}/s")
    report.figure("sqlite read, 10 vs 0 versions per field", ratio(rates, "10", "0"))
    report.figure("sqlite read, 100 vs 0 versions per field", ratio(rates, "100", "0"))


async def bench_profile_size(
    store: SqliteProfileStore, report: Report, args: argparse.Namespace
) -> None:
    print("\n[6c] scale: get_by_customer_id of a profile of 10 / 50 / 200 fields")
    tenant = uuid4()
    ops = {}
    for size in (10, 50, 200):
        person = await store.get_or_create(tenant, Channel.WEB, f"size-{size}")
        current = await store.get_by_id(tenant, person.id)
        assert current is not None
        for n in range(size):
            item = bench_field(n).model_copy(update={"name": f"field_{n:03d}"})
            current.fields[item.name] = item
        await store.save(current)

        def read(customer: UUID = person.customer_id) -> Awaitable[Any]:
            return store.get_by_customer_id(tenant, customer)

        ops[size] = read
    rates = await interleaved(
        {str(n): op for n, op in ops.items()}, args.pairs, args.seconds / args.pairs / 3
    )
    for size in ops:
        spread = Spread.of(rates[str(size)])
        report.point("sqlite read vs profile size (fields)", size, spread)
        print(f"  {size:3d} fields: {spread.median:9,.0f}/s")
    report.figure("sqlite read, 200 vs 50 fields (ideal 0.25)", ratio(rates, "200", "50"))


async def bench_chain_depth(
    store: SqliteProfileStore, report: Report, args: argparse.Namespace
) -> None:
    print("\n[6d] scale: get_derivation_chain of 1 / 10 / 50 items")
    # the same file, with a chain limit above the deepest chain measured (default: 10)
    deep = SqliteProfileStore(
        SqliteSettings(path=store.path), rules=StoreRules(max_derivation_chain_depth=100)
    )
    async with deep:
        await chain_curve(deep, report, args)


async def chain_curve(store: SqliteProfileStore, report: Report, args: argparse.Namespace) -> None:
    tenant = uuid4()
    person = await store.get_or_create(tenant, Channel.WEB, "chain")
    ops = {}
    for depth in (1, 10, 50):
        parent: UUID | None = None
        for n in range(depth):
            item = ProfileField(
                name=f"chain_{depth}_{n}",
                value=n,
                source_item_id=parent,
                source_item_type=None if parent is None else SourceType.PROFILE_FIELD,
            )
            await store.update_field(tenant, person.id, item)
            parent = item.id
        assert parent is not None

        def chain(leaf: UUID = parent) -> Awaitable[Any]:
            return store.get_derivation_chain(tenant, leaf, "profile_field")

        assert len(await chain()) == depth
        ops[depth] = chain
    rates = await interleaved(
        {str(d): op for d, op in ops.items()}, args.pairs, args.seconds / args.pairs / 3
    )
    for depth in ops:
        spread = Spread.of(rates[str(depth)])
        report.point("sqlite derivation chain vs depth (items)", depth, spread)
        print(f"  {depth:3d} items: {spread.median:9,.0f}/s")
    report.figure("sqlite derivation chain, 50 vs 10 items (ideal 0.2)", ratio(rates, "50", "10"))


async def tenant_store(folder: Path, profiles: int) -> tuple[SqliteProfileStore, UUID, UUID]:
    """A database holding one tenant of ``profiles`` profiles (5 fields each) plus the
    measured profile of 50 fields. The others are bulk-loaded in one transaction with the
    store's own INSERT statements and row encoding (as the PostgreSQL bench COPYs them): a
    save() per profile would take minutes for 100,000; the measured one is written through
    the store."""
    store = new_store(folder / f"tenant-{profiles}.db")
    await store.setup()
    tenant = uuid4()
    started = time.perf_counter()
    now = datetime.now(UTC)
    five = [bench_field(i).model_copy(update={"collected_at": now}) for i in range(5)]
    rows: list[tuple[Any, ...]] = []
    identities: list[tuple[Any, ...]] = []
    values: list[tuple[Any, ...]] = []
    for n in range(profiles - 1):
        profile = CustomerProfile(tenant_id=tenant, created_at=now, updated_at=now)
        key = (str(tenant), str(profile.id))
        rows.append((*key, str(profile.customer_id), "unverified", codec.ts(now), codec.ts(now)))
        identity = ChannelIdentity(channel=Channel.SMS, channel_user_id=f"+1{n:010d}", primary=True)
        identities.append((*key, 0, *codec.identity_params(identity)))
        values += [(*key, *codec.field_params(f.model_copy(update={"id": uuid4()}))) for f in five]
    conn = store.connection
    await conn.execute("BEGIN IMMEDIATE")
    await conn.executemany(
        "INSERT INTO profiles (tenant_id, id, customer_id, verification_level, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    await conn.executemany(sqlite_store._INSERT_IDENTITY, identities)
    await conn.executemany(sqlite_store._INSERT_FIELD, values)
    await conn.execute("COMMIT")
    person = await store.get_or_create(tenant, Channel.WEB, "measured")
    for n in range(FIELDS):
        await store.update_field(tenant, person.id, bench_field(n))
    # the bulk-loaded rows read as the store's own
    assert profiles < 2 or await store.get_by_channel_identity(tenant, Channel.SMS, "+10000000000")
    print(f"  {profiles:,} profiles loaded in {time.perf_counter() - started:.1f}s")
    # reopen: the last close checkpoints the WAL, so every size starts from the same state
    # (left as loaded, a small file is read half from the WAL, a big one from the database)
    await store.aclose()
    store = new_store(folder / f"tenant-{profiles}.db")
    await store.setup()
    return store, tenant, person.customer_id


async def bench_tenant_size(folder: Path, report: Report, args: argparse.Namespace) -> None:
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000) if not args.quick else (100, 1_000)
    print(f"\n[6b] scale: get_by_customer_id in a tenant of {sizes[0]:,} vs {sizes[-1]:,} profiles")
    stores = [await tenant_store(folder, size) for size in sizes]
    try:
        rates = await interleaved(
            {
                str(size): (lambda s=s, t=t, c=c: s.get_by_customer_id(t, c))
                for size, (s, t, c) in zip(sizes, stores, strict=True)
            },
            args.pairs,
            args.seconds / args.pairs / 2,
        )
    finally:
        for store, *_ in stores:
            await store.aclose()
    for size in sizes:
        report.point("sqlite read vs tenant size (profiles)", size, Spread.of(rates[str(size)]))
        print(f"  {size:6,d} profiles: {Spread.of(rates[str(size)]).median:9,.0f}/s")
    report.figure(
        f"sqlite read, tenant of {sizes[-1]:,} vs {sizes[0]:,} profiles",
        ratio(rates, str(sizes[-1]), str(sizes[0])),
    )


SECTIONS = ("read", "crypto", "missing", "depth", "size", "chain", "tenant")


async def main(args: argparse.Namespace) -> int:
    report = Report("sqlite_bench.py")
    wanted = set(SECTIONS) if args.only is None else {args.only}
    if args.no_scale:
        wanted -= {"depth", "size", "chain", "tenant"}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        async with new_store(folder / "bench.db") as store:
            if "read" in wanted:
                await bench_reads(store, report, args)
            if "crypto" in wanted:
                await bench_encryption(store, report, args)
            if "missing" in wanted:
                await bench_missing(store, report, args)
            if "depth" in wanted:
                await bench_depth(store, report, args)
            if "size" in wanted:
                await bench_profile_size(store, report, args)
            if "chain" in wanted:
                await bench_chain_depth(store, report, args)
        if "tenant" in wanted:
            await bench_tenant_size(folder, report, args)
    report.summary()
    if not (args.no_results or args.only):  # a partial run replaces neither
        plot(report, Path(__file__).with_name("sqlite_scale.png"))
        write_results(report)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per figure, all rounds")
    parser.add_argument("--pairs", type=int, default=30, help="paired rounds per figure")
    parser.add_argument("--quick", action="store_true", help="tenant sizes 100 / 1,000")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale curves")
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--only", choices=SECTIONS, help="run one section (no RESULTS.md)")
    sys.exit(asyncio.run(main(parser.parse_args())))
