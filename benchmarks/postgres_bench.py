"""Speed of the PostgreSQL provider against raw asyncpg on the same server, in one run.

    .venv/bin/python benchmarks/postgres_bench.py [--seconds 5] [--pairs 30]
        [--expire-rows 1000000] [--tenant-sizes 1000,10000,100000] [--no-results]
        [--only read1|read|scale|update|expire|crypto|missing|peer]

Works in a database of its own (created on CCVAULT_TEST_POSTGRES_DSN's server, default the
local one on 5432, and dropped at the end). Every figure is the median of per-pair ratios
of paired interleaved rounds (baseline round, candidate round, alternating; see
``_common``), printed with its spread and number of pairs, against its goal:

1. ``get_by_customer_id`` of a profile with 50 active fields x 20 superseded versions vs a
   raw asyncpg query fetching those 50 rows, with one connection and with 16 concurrent
   clients (4 client processes x 4 coroutines, each process with its own pool: one Python
   process driving 16 clients measures mostly its own CPU): >= 0.5x (issue 4);
2. scale: the same read with 0 / 10 / 100 versions per field (100 vs 0 within 0.8..1.2,
   issue 4), in a tenant of 1k / 10k / 100k profiles (each in a schema of its own), of a
   profile of 10 / 50 / 200 fields, and ``get_derivation_chain`` of 1 / 10 / 100 links
   (curves, drawn with the other providers' by ``plot_results.py``);
3. ``update_field`` with supersede vs ONE raw transaction doing the same work (BEGIN;
   UPDATE ... superseded; INSERT the new version; COMMIT): >= 0.5x (issue 4);
4. ``expire_stale_fields`` over 1,000,000 fields, 100,000 due, vs one raw UPDATE: time
   <= 1.5x (issue 4); 4b. a large generated tenant (``--expire-large-rows``, default
   3,000,000) under ``statement_timeout = 3s``: the former single UPDATE is cancelled, the
   batched job finishes; rows/s and time vs a raw loop of the same batch statement <= 1.5x
   (issue 17);
5. the read through ``EncryptedProfileStore`` (every value sealed) vs the same store
   without it: >= 0.85x (issue 13);
6. ``get_missing_fields`` with 50 requirements vs the two raw queries it needs (the
   scenario's requirements, and the check columns of the agent's enabled definitions):
   time <= 1.5x (issue 13); for information, vs the store's own one statement sent raw;
7. peer: LangGraph's ``AsyncPostgresStore`` (the ``bench`` extra) holding the same profile
   as one JSON document, same server, same run: read vs ``aget``, ``update_field`` vs
   ``aget`` + ``aput``; skipped with the reason when LangGraph is not installed.

Writes its table to ``benchmarks/RESULTS.md`` ("## Store throughput") unless
``--no-results`` or ``--only``. Not a test: nothing here runs under ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from _common import (
    FIELDS,
    HISTORY_DEPTH,
    TENANT_SIZE,
    Report,
    Spread,
    encryption_pair,
    interleaved,
    missing_fields_setup,
    paired,
    paired_runs,
    plot,
    ratio,
    scale_curves,
    scale_point,
    write_results,
)

from ccvault.models import Channel, ProfileField
from ccvault_postgres import PostgresProfileStore, PostgresSettings
from ccvault_postgres._sql import GET_REQUIREMENT_CHECKS
from ccvault_postgres.testing import (
    admin_dsn,
    create_database,
    drop_database,
    dsn_with_database,
)

RAW_READ = (
    "SELECT * FROM profile_fields WHERE tenant_id = $1 AND profile_id = $2 AND status = 'active'"
)
# the two queries get_missing_fields needs, as a hand-written client would send them: the
# scenario's requirements (whole: missing ones are returned), and of the agent's enabled
# definitions what the check reads (sqlite_bench.py sends the same two)
RAW_REQUIREMENTS = (
    "SELECT * FROM scenario_field_requirements WHERE tenant_id = $1 AND scenario_id = $2 "
    "AND step_id IS NULL"
)
RAW_DEFINITIONS = (
    "SELECT name, required_verification, freshness_seconds FROM profile_field_definitions "
    "WHERE tenant_id = $1 AND agent_id = $2 AND enabled"
)
SCHEMA = "bench"
PROVIDER = "PostgreSQL"
ISSUE4 = "goal of issue 4"


def single_store(dsn: str, schema: str = SCHEMA, **extra: Any) -> PostgresProfileStore:
    return PostgresProfileStore(
        PostgresSettings(
            dsn=dsn,
            db_schema=schema,
            min_pool_size=1,
            max_pool_size=1,
            migrate_on_start=True,
            **extra,
        )
    )


async def migrated_store(dsn: str, schema: str = SCHEMA, **extra: Any) -> PostgresProfileStore:
    """:func:`single_store` after the explicit ``ccvault migrate`` step (setup() never
    changes the schema); idempotent for a schema already migrated."""
    store = single_store(dsn, schema, **extra)
    await store.migrate()
    return store


WORKER_PROCESSES = 4  # 16 clients = 4 processes x 4 coroutines, each process its own pool


async def worker(args: argparse.Namespace) -> None:
    """A client process: ``--clients`` coroutines reading one profile, raw or through the
    store; prints the number of reads done in ``--seconds`` after the parent says go."""
    tenant, profile, customer = (uuid.UUID(x) for x in (args.tenant, args.profile, args.customer))
    settings = {"search_path": SCHEMA}
    if args.worker == "raw":
        pool = await asyncpg.create_pool(
            args.dsn, min_size=args.clients, max_size=args.clients, server_settings=settings
        )

        async def operation() -> Any:
            return await pool.fetch(RAW_READ, tenant, profile)

    else:
        store = PostgresProfileStore(
            PostgresSettings(
                dsn=args.dsn, db_schema=SCHEMA, min_pool_size=args.clients,
                max_pool_size=args.clients,
            )
        )  # fmt: skip
        await store.setup()

        async def operation() -> Any:
            return await store.get_by_customer_id(tenant, customer)

    for _ in range(50):
        await operation()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    done = 0
    deadline = time.perf_counter() + args.seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await operation()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(args.clients)))
    print(done / (time.perf_counter() - start), flush=True)


async def multiprocess_throughput(
    kind: str, dsn: str, ids: list[uuid.UUID], seconds: float
) -> float:
    """Reads per second of ``WORKER_PROCESSES`` x 4 concurrent clients (``kind``: raw/store)."""
    command = [
        sys.executable, __file__, "--worker", kind, "--dsn", dsn, "--clients", "4",
        "--seconds", str(seconds), "--tenant", str(ids[0]), "--profile", str(ids[1]),
        "--customer", str(ids[2]),
    ]  # fmt: skip
    procs = [
        await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(WORKER_PROCESSES)
    ]
    for proc in procs:  # everyone warmed up and connected before the clock starts
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    rates = []
    for proc in procs:
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        rates.append(float(out.decode().split()[-1]))
    return sum(rates)


async def load_versions(
    store: PostgresProfileStore, tenant: uuid.UUID, profile: uuid.UUID, versions: int
) -> None:
    """COPY ``FIELDS`` names x (``versions`` superseded + 1 active) rows into a profile."""
    base = datetime.now(UTC) - timedelta(days=1)
    rows = []
    for n in range(FIELDS):
        ids = [uuid.uuid4() for _ in range(versions + 1)]
        for k, item_id in enumerate(ids):
            last = k == versions
            at = base + timedelta(seconds=k)
            rows.append(
                (
                    tenant,
                    item_id,
                    profile,
                    f"field_{n:02d}",
                    f"value {n} version {k} for somebody@example.com",
                    "string",
                    "user_provided",
                    {"extracted_by": "bench", "turn": k},
                    "active" if last else "superseded",
                    None if last else ids[k + 1],
                    None if last else at + timedelta(seconds=1),
                    False,
                    0.9,
                    False,
                    at,
                    at,
                )
            )
    async with store.connection() as conn:
        await conn.copy_records_to_table(
            "profile_fields",
            records=rows,
            columns=[
                "tenant_id", "id", "profile_id", "name", "value", "value_type", "source",
                "source_metadata", "status", "superseded_by_id", "superseded_at", "verified",
                "confidence", "requires_confirmation", "collected_at", "updated_at",
            ],
        )  # fmt: skip
        await conn.execute("ANALYZE profile_fields")


async def bench_reads(dsn: str, report: Report, args: argparse.Namespace) -> None:
    print("\n[1] get_by_customer_id, 50 active fields x 20 superseded versions, vs raw asyncpg")
    single = await migrated_store(dsn)
    await single.setup()
    tenant = uuid.uuid4()
    profile = await single.get_or_create(tenant, Channel.WEB, "bench-20")
    await load_versions(single, tenant, profile.id, 20)
    found = await single.get_by_customer_id(tenant, profile.customer_id)
    assert found is not None and len(found.fields) == FIELDS

    raw_conn = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
    assert len(await raw_conn.fetch(RAW_READ, tenant, profile.id)) == FIELDS
    try:
        base, cand, r = await paired(
            lambda: raw_conn.fetch(RAW_READ, tenant, profile.id),
            lambda: single.get_by_customer_id(tenant, profile.customer_id),
            args.pairs,
            args.seconds / args.pairs / 2,
        )
        print(f"  1 client: raw 50-row query {base.median:9,.0f}/s,"
              f" get_by_customer_id {cand.median:9,.0f}/s")  # fmt: skip
        report.figure("pg read vs raw 50-row fetch (1 connection)", r, ">= 0.5", detail=ISSUE4)
        if args.only == "read1":  # the quick figure to iterate on
            return

        ids = [tenant, profile.id, profile.customer_id]
        pairs = min(4, max(2, args.pairs // 3))  # 8 process pools per pair
        base, cand, r = await paired_runs(
            lambda: multiprocess_throughput("raw", dsn, ids, args.seconds / pairs / 2),
            lambda: multiprocess_throughput("store", dsn, ids, args.seconds / pairs / 2),
            pairs,
        )
        print(f"  16 clients ({WORKER_PROCESSES} processes x 4): raw {base.median:9,.0f}/s,"
              f" get_by_customer_id {cand.median:9,.0f}/s")  # fmt: skip
        report.figure("pg read vs raw 50-row fetch (16 clients)", r, ">= 0.5", detail=ISSUE4)
    finally:
        await raw_conn.close()
        await single.aclose()


async def bench_depth(dsn: str, report: Report, args: argparse.Namespace) -> None:
    print("\n[2a] scale: the same read with 0 / 10 / 100 versions per field")
    store = await migrated_store(dsn)
    await store.setup()
    tenant = uuid.uuid4()
    ops: dict[str, Callable[[], Awaitable[Any]]] = {}
    for depth in (0, 10, 100):
        profile = await store.get_or_create(tenant, Channel.WEB, f"depth-{depth}")
        await load_versions(store, tenant, profile.id, depth)

        def read(customer: uuid.UUID = profile.customer_id) -> Awaitable[Any]:
            return store.get_by_customer_id(tenant, customer)

        ops[str(depth)] = read
    try:
        rates = await interleaved(ops, args.pairs, args.seconds / args.pairs / len(ops))
    finally:
        await store.aclose()
    for depth, values in rates.items():
        scale_point(report, HISTORY_DEPTH, PROVIDER, int(depth), Spread.of(values))
        print(f"  {depth:>3} versions: {Spread.of(values).median:9,.0f}/s")
    report.figure("pg read, 10 vs 0 versions per field", ratio(rates, "10", "0"))
    report.figure(
        "pg read, 100 vs 0 versions per field", ratio(rates, "100", "0"), "0.8..1.2", detail=ISSUE4
    )


async def tenant_store(
    dsn: str, profiles: int
) -> tuple[PostgresProfileStore, uuid.UUID, uuid.UUID]:
    """A schema of its own holding one tenant of ``profiles`` profiles (5 fields each,
    COPYed), of which one is the measured profile of 50 fields."""
    store = await migrated_store(dsn, f"bench_tenant_{profiles}")
    await store.setup()
    tenant = uuid.uuid4()
    started = time.perf_counter()
    now = datetime.now(UTC)
    others = [uuid.uuid4() for _ in range(profiles - 1)]
    # loading 100k profiles takes longer than the store's statement_timeout: lifted for
    # this transaction only (SET LOCAL), never for the measured reads
    async with store.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL statement_timeout = 0")
        await conn.copy_records_to_table(
            "customer_profiles",
            records=[(tenant, p, uuid.uuid4(), "unverified", now, now) for p in others],
            columns=["tenant_id", "id", "customer_id", "verification_level", "created_at",
                     "updated_at"],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "profile_fields",
            records=[
                (tenant, uuid.uuid4(), p, f"field_{n:02d}", f"value {n}", "string",
                 "user_provided", {}, "active", False, 0.9, False, now, now)
                for p in others for n in range(5)
            ],
            columns=["tenant_id", "id", "profile_id", "name", "value", "value_type", "source",
                     "source_metadata", "status", "verified", "confidence",
                     "requires_confirmation", "collected_at", "updated_at"],
        )  # fmt: skip
    profile = await store.get_or_create(tenant, Channel.WEB, "measured")
    await load_versions(store, tenant, profile.id, 0)
    async with store.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL statement_timeout = 0")
        await conn.execute("ANALYZE")
    print(f"  {profiles:,} profiles loaded in {time.perf_counter() - started:.1f}s")
    return store, tenant, profile.customer_id


async def bench_tenant_size(dsn: str, report: Report, args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.tenant_sizes.split(",")]
    print(f"\n[2b] scale: the read in a tenant of {' / '.join(f'{s:,}' for s in sizes)} profiles")
    stores = [await tenant_store(dsn, size) for size in sizes]
    try:
        rates = await interleaved(
            {
                str(size): (lambda s=s, t=t, c=c: s.get_by_customer_id(t, c))
                for size, (s, t, c) in zip(sizes, stores, strict=True)
            },
            args.pairs,
            args.seconds / args.pairs / len(sizes),
        )
    finally:
        for store, *_ in stores:
            await store.aclose()
    for size in sizes:
        scale_point(report, TENANT_SIZE, PROVIDER, size, Spread.of(rates[str(size)]))
        print(f"  {size:>7,} profiles: {Spread.of(rates[str(size)]).median:9,.0f}/s")
    for size in sizes[1:]:
        report.figure(
            f"pg read, tenant of {size:,} vs {sizes[0]:,} profiles",
            ratio(rates, str(size), str(sizes[0])),
        )


async def bench_curves(dsn: str, report: Report, args: argparse.Namespace) -> None:
    print("\n[2c] scale: profile size (10 / 50 / 200 fields), chain depth (1 / 10 / 100 links)")
    store = await migrated_store(dsn)
    await store.setup()
    try:
        await scale_curves(
            store, report, PROVIDER, pairs=args.pairs, seconds=args.seconds, depths=()
        )
    finally:
        await store.aclose()


async def bench_peer(dsn: str, report: Report, args: argparse.Namespace) -> None:
    """LangGraph's store with its PostgreSQL backend, holding the same 50-field profile as
    one JSON document, measured in the same run: read vs ``aget``, ``update_field`` vs a
    read-modify-write (``aget`` + ``aput``). Skipped with the reason when not installed."""
    print("\n[7] peer: LangGraph AsyncPostgresStore (the profile as one document)")
    try:
        from langgraph.store.postgres import AsyncPostgresStore
    except ImportError as exc:
        line = f"LangGraph peer skipped: langgraph's PostgreSQL store is not installed ({exc})"
        print(f"  {line}")
        report.notes.append(line)
        return
    store = await migrated_store(dsn)
    await store.setup()
    try:
        async with AsyncPostgresStore.from_conn_string(dsn) as peer:
            await peer.setup()
            tenant = uuid.uuid4()
            profile = await store.get_or_create(tenant, Channel.WEB, "peer")
            await load_versions(store, tenant, profile.id, 0)
            loaded = await store.get_by_customer_id(tenant, profile.customer_id)
            assert loaded is not None and len(loaded.fields) == FIELDS
            namespace, key = ("profiles", str(tenant)), str(profile.id)
            await peer.aput(namespace, key, loaded.model_dump(mode="json"))
            found = await peer.aget(namespace, key)
            assert found is not None and len(found.value["fields"]) == FIELDS
            rates = await interleaved(
                {
                    "vault read": lambda: store.get_by_customer_id(tenant, profile.customer_id),
                    "langgraph aget": lambda: peer.aget(namespace, key),
                },
                args.pairs,
                args.seconds / args.pairs / 2,
            )
            report.figure(
                "pg read vs LangGraph aget (same profile, one document)",
                ratio(rates, "vault read", "langgraph aget"),
                detail="peer",
            )
            versions = iter(range(1, 10**9))

            async def vault_update() -> Any:
                n = next(versions)
                return await store.update_field(
                    tenant, profile.id, ProfileField(name=f"field_{n % FIELDS:02d}", value=n)
                )

            async def peer_update() -> Any:
                n = next(versions)
                item = await peer.aget(namespace, key)
                assert item is not None
                document = dict(item.value)
                document["fields"] = dict(document["fields"])
                document["fields"][f"field_{n % FIELDS:02d}"] = {"value": n}
                await peer.aput(namespace, key, document)

            rates = await interleaved(
                {"vault update_field": vault_update, "langgraph get+put": peer_update},
                args.pairs,
                args.seconds / args.pairs / 2,
            )
            report.figure(
                "pg update_field vs LangGraph aget+aput (read-modify-write)",
                ratio(rates, "vault update_field", "langgraph get+put"),
                detail="peer",
            )
    finally:
        await store.aclose()


async def bench_update(dsn: str, report: Report, args: argparse.Namespace) -> None:
    print("\n[3] update_field with supersede vs one raw transaction (BEGIN; UPDATE; INSERT;"
          " COMMIT)")  # fmt: skip
    store = await migrated_store(dsn)
    await store.setup()
    tenant = uuid.uuid4()
    profile = (await store.get_or_create(tenant, Channel.WEB, "bench-update")).id
    raw = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
    await raw.set_type_codec(
        "jsonb", encoder=lambda v: v, decoder=lambda v: v, schema="pg_catalog", format="text"
    )
    supersede = """
        UPDATE profile_fields SET status = 'superseded', superseded_by_id = $4,
               superseded_at = $5, updated_at = $5
        WHERE tenant_id = $1 AND profile_id = $2 AND name = $3 AND status = 'active'
    """
    insert = """
        INSERT INTO profile_fields (tenant_id, id, profile_id, name, value, value_type, source,
            source_metadata, status, verified, confidence, requires_confirmation, collected_at,
            updated_at)
        VALUES ($1, $2, $3, $4, $5, 'string', 'user_provided', $6, 'active', false, 0.9,
                false, $7, $7)
    """
    counter = 0

    async def raw_update() -> None:
        nonlocal counter
        counter += 1
        new_id, now = uuid.uuid4(), datetime.now(UTC)
        async with raw.transaction():  # BEGIN ... COMMIT: one commit, as update_field does
            await raw.execute(supersede, tenant, profile, "raw_counter", new_id, now)
            await raw.execute(
                insert, tenant, new_id, profile, "raw_counter", f'"v{counter}"', '{"k": 1}', now
            )

    async def store_update() -> None:
        nonlocal counter
        counter += 1
        field = ProfileField(name="counter", value=f"v{counter}", source_metadata={"k": 1},
                             confidence=0.9)  # fmt: skip
        await store.update_field(tenant, profile, field)

    try:
        base, cand, r = await paired(
            raw_update, store_update, args.pairs, args.seconds / args.pairs / 2
        )
        print(f"  raw transaction {base.median:9,.0f}/s, update_field {cand.median:9,.0f}/s")
        report.figure("pg update_field vs raw one transaction", r, ">= 0.5", detail=ISSUE4)
        history = await store.get_field_history(tenant, profile, "counter")
        assert sum(1 for v in history if v.status.value == "active") == 1
        rows = await raw.fetch(
            "SELECT status FROM profile_fields WHERE tenant_id = $1 AND name = 'raw_counter'",
            tenant,
        )
        assert sum(row["status"] == "active" for row in rows) == 1
    finally:
        await raw.close()
        await store.aclose()


async def bench_expire(dsn: str, report: Report, args: argparse.Namespace) -> None:
    total = args.expire_rows
    due = total // 10
    print(f"\n[4] expire_stale_fields over {total:,} fields, {due:,} due, vs one raw UPDATE")
    store = await migrated_store(dsn, "bench_expire", statement_timeout_seconds=0)
    await store.setup()
    tenant = uuid.uuid4()
    profiles = [uuid.uuid4() for _ in range(max(1, total // 100))]
    now = datetime.now(UTC)
    started = time.perf_counter()
    async with store.connection() as conn:
        await conn.copy_records_to_table(
            "customer_profiles",
            records=[(tenant, p, uuid.uuid4(), "unverified", now, now) for p in profiles],
            columns=["tenant_id", "id", "customer_id", "verification_level", "created_at",
                     "updated_at"],
        )  # fmt: skip
        past, future = now - timedelta(hours=1), now + timedelta(days=30)

        def rows() -> Any:
            for i in range(total):
                yield (
                    tenant, uuid.uuid4(), profiles[i // 100], f"field_{i % 100:02d}",
                    i, "number", "user_provided", {}, "active", False, 1.0, False,
                    now, now, past if i % 10 == 0 else future,
                )  # fmt: skip

        await conn.copy_records_to_table(
            "profile_fields",
            records=rows(),
            columns=["tenant_id", "id", "profile_id", "name", "value", "value_type", "source",
                     "source_metadata", "status", "verified", "confidence",
                     "requires_confirmation", "collected_at", "updated_at", "expires_at"],
        )  # fmt: skip
        await conn.execute("VACUUM ANALYZE profile_fields")
    print(f"  loaded with COPY in {time.perf_counter() - started:.1f}s")

    raw = await asyncpg.connect(dsn, server_settings={"search_path": "bench_expire"})
    raw_update = """
        UPDATE profile_fields SET status = 'expired'
        WHERE tenant_id = $1 AND status = 'active' AND expires_at <= $2
    """

    async def reset() -> None:
        await raw.execute(
            "UPDATE profile_fields SET status = 'active' WHERE tenant_id = $1"
            " AND status = 'expired'",
            tenant,
        )
        await raw.execute("VACUUM ANALYZE profile_fields")

    async def run_ours() -> float:
        await reset()
        start = time.perf_counter()
        count = await store.expire_stale_fields(tenant)
        elapsed = time.perf_counter() - start
        assert count == due, count
        return elapsed

    async def run_raw() -> float:
        await reset()
        start = time.perf_counter()
        status = await raw.execute(raw_update, tenant, datetime.now(UTC))
        elapsed = time.perf_counter() - start
        assert status == f"UPDATE {due}", status
        return elapsed

    try:
        base, cand, cost = await paired_runs(run_raw, run_ours, args.expire_pairs)
        print(f"  raw UPDATE {base.median:.3f}s, expire_stale_fields {cand.median:.3f}s"
              " (medians)")  # fmt: skip
        report.figure(
            f"pg expire_stale_fields vs raw UPDATE ({total:,} rows)",
            cost,
            "<= 1.5",
            cost=True,
            detail=ISSUE4,
        )
    finally:
        await raw.close()
        await store.aclose()
    if args.expire_large_rows > 0:
        await bench_expire_large(dsn, report, args)


# one batch of the raw baseline: the statement shape the provider uses, sent by raw asyncpg
_RAW_EXPIRE_BATCH = """
UPDATE profile_fields SET status = 'expired', updated_at = $2
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM profile_fields
    WHERE tenant_id = $1 AND status = 'active' AND expires_at <= $2
    ORDER BY expires_at
    LIMIT $3 FOR UPDATE SKIP LOCKED))
  AND tenant_id = $1 AND status = 'active' AND expires_at <= $2
"""


async def bench_expire_large(dsn: str, report: Report, args: argparse.Namespace) -> None:
    """Issue 17: a large tenant under ``statement_timeout = 3s``. The rows' ``expires_at``
    fall in ``2 x pairs`` equal slices, interleaved over the table; run k expires slice k
    (its ``now`` is the end of the slice), so no reset is needed between runs and every
    run does the same work. The former single UPDATE over a slice is run first: it is
    cancelled by the timeout (0 rows). Then paired runs: ``expire_stale_fields`` (batches of
    ``--expire-batch``, one statement each) vs a raw asyncpg loop sending the same batch
    statement until a batch comes back short."""
    total, pairs, batch = args.expire_large_rows, args.expire_large_pairs, args.expire_batch
    slices = 2 * pairs
    per_slice = total // slices
    print(
        f"\n[4b] expire a {total:,}-row tenant under statement_timeout 3s: {slices} slices of "
        f"{per_slice:,} due rows, batches of {batch:,}"
    )
    schema = "bench_expire_large"
    store = await migrated_store(dsn, schema, statement_timeout_seconds=3)
    await store.setup()
    tenant = uuid.uuid4()
    base = datetime(2026, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    loader = await asyncpg.connect(
        dsn, server_settings={"search_path": schema, "statement_timeout": "0"}
    )
    try:
        await loader.execute(
            "INSERT INTO customer_profiles (tenant_id, id, customer_id, verification_level,"
            " created_at, updated_at) SELECT $1, gen_random_uuid(), gen_random_uuid(),"
            " 'unverified', $2, $2 FROM generate_series(1, $3)",
            tenant,
            base,
            max(1, total // 100),
        )
        # field g of profile p expires in slice (row number mod slices): slices interleave
        await loader.execute(
            """
            INSERT INTO profile_fields (tenant_id, id, profile_id, name, value, value_type,
                source, source_metadata, status, verified, confidence, requires_confirmation,
                collected_at, updated_at, expires_at)
            SELECT p.tenant_id, gen_random_uuid(), p.id, 'field_' || g, to_jsonb(g), 'number',
                   'user_provided', '{}'::jsonb, 'active', false, 1.0, false, $2::timestamptz,
                   $2::timestamptz,
                   $2::timestamptz + make_interval(mins => 1 + ((row_number() OVER ()) % $4)::int)
            FROM customer_profiles p CROSS JOIN generate_series(1, 100) g
            WHERE p.tenant_id = $1
            LIMIT $3
            """,
            tenant,
            base,
            total,
            slices,
        )
        await loader.execute("VACUUM ANALYZE profile_fields")
        loaded = await loader.fetchval(
            "SELECT count(*) FROM profile_fields WHERE tenant_id = $1", tenant
        )
    finally:
        await loader.close()
    print(f"  generated {loaded:,} rows in {time.perf_counter() - started:.1f}s")

    raw = await asyncpg.connect(
        dsn, server_settings={"search_path": schema, "statement_timeout": "3s"}
    )
    assert await raw.fetchval("SHOW statement_timeout") == "3s"
    next_slice = 0

    def slice_now() -> datetime:
        nonlocal next_slice
        next_slice += 1
        # the end of slice k: every row of slices 0..k-1 is already expired
        return base + timedelta(minutes=next_slice, seconds=30)

    async def slice_size(now: datetime) -> int:
        return int(
            await raw.fetchval(
                "SELECT count(*) FROM profile_fields WHERE tenant_id = $1 AND status = 'active'"
                " AND expires_at <= $2",
                tenant,
                now,
            )
        )

    # the former implementation: one UPDATE over the slice, cancelled by the timeout
    first = base + timedelta(minutes=1, seconds=30)
    due = await slice_size(first)
    single_started = time.perf_counter()
    transaction = raw.transaction()
    await transaction.start()
    try:
        await raw.execute(
            "UPDATE profile_fields SET status = 'expired', updated_at = $2"
            " WHERE tenant_id = $1 AND status = 'active' AND expires_at <= $2",
            tenant,
            first,
        )
        outcome = "finished (rolled back here: the slice is too small to show the timeout)"
    except asyncpg.QueryCanceledError:
        outcome = "cancelled by statement_timeout: 0 rows expired"
    finally:
        single = time.perf_counter() - single_started
        await transaction.rollback()  # the slice stays due for the paired runs
    assert await slice_size(first) == due
    print(f"  single UPDATE over {due:,} due rows: {outcome} after {single:.1f}s")
    report.notes.append(
        f"expire, {loaded:,}-row tenant, statement_timeout 3s: the former single UPDATE over "
        f"{due:,} due rows was {outcome} after {single:.1f}s"
    )
    rates: dict[str, list[float]] = {"raw": [], "store": []}

    async def run_raw() -> float:
        now = slice_now()
        due = await slice_size(now)
        start = time.perf_counter()
        done = 0
        while True:
            count = int((await raw.execute(_RAW_EXPIRE_BATCH, tenant, now, batch)).split()[-1])
            done += count
            if count < batch:
                break
        elapsed = time.perf_counter() - start
        assert done == due, (done, due)
        rates["raw"].append(done / elapsed)
        return elapsed

    async def run_store() -> float:
        now = slice_now()
        due = await slice_size(now)
        store.now = lambda: now  # type: ignore[method-assign]
        biggest = 0

        def on_batch(progress: Any) -> None:
            nonlocal biggest
            biggest = max(biggest, progress.rows)

        start = time.perf_counter()
        done = await store.expire_stale_fields(tenant, batch_size=batch, progress=on_batch)
        elapsed = time.perf_counter() - start
        assert done == due and biggest <= batch, (done, due, biggest)
        rates["store"].append(done / elapsed)
        return elapsed

    try:
        base_s, cand_s, cost = await paired_runs(run_raw, run_store, pairs)
        raw_rate, store_rate = Spread.of(rates["raw"]), Spread.of(rates["store"])
        print(
            f"  raw batched {base_s.median:.2f}s ({raw_rate.median:,.0f} rows/s), "
            f"expire_stale_fields {cand_s.median:.2f}s ({store_rate.median:,.0f} rows/s)"
            " (medians)"
        )
        report.notes.append(
            f"expire, {loaded:,}-row tenant, statement_timeout 3s, {per_slice:,} due rows per "
            f"run, batches of {batch:,}: expire_stale_fields {store_rate.median:,.0f} rows/s, "
            f"raw batched UPDATE loop {raw_rate.median:,.0f} rows/s (medians of {pairs} pairs)"
        )
        report.figure(
            f"pg expire_stale_fields vs raw batched UPDATE ({loaded:,}-row tenant, 3 s timeout)",
            cost,
            "<= 1.5",
            cost=True,
            detail="issue 17: batches under statement_timeout",
        )
    finally:
        await raw.close()
        await store.aclose()


async def bench_crypto(dsn: str, report: Report, args: argparse.Namespace) -> None:
    print("\n[5] get_by_customer_id with every value sealed vs the same store in plaintext")
    from _common import fill

    from ccvault.crypto import EncryptedProfileStore, Keyring, generate_key_entry

    store = await migrated_store(dsn)
    await store.setup()
    try:
        plain, sealed = await encryption_pair(store)
        # the same read with the opened-envelope cache off: every read decrypts every
        # envelope (what a profile read for the first time by this process costs)
        cold = EncryptedProfileStore(
            store,
            Keyring.parse(generate_key_entry("cold")),
            encrypt_all=True,
            opened_cache_size=0,
        )
        tenant = uuid.uuid4()
        profile = await cold.get_or_create(tenant, Channel.WEB, "cold")
        await fill(cold, tenant, profile.id)

        async def cold_read() -> Any:
            return await cold.get_by_customer_id(tenant, profile.customer_id)

        rates = await interleaved(
            {"plain": plain, "sealed": sealed, "cold": cold_read},
            args.pairs,
            args.seconds / args.pairs / 3,
        )
    finally:
        await store.aclose()
    base, cand = Spread.of(rates["plain"]), Spread.of(rates["sealed"])
    print(f"  plaintext {base.median:9,.0f}/s, encrypted {cand.median:9,.0f}/s")
    report.figure("pg encrypted read vs plaintext", ratio(rates, "sealed", "plain"), ">= 0.85")
    report.figure(
        "pg encrypted read, opened-envelope cache off, vs plaintext",
        ratio(rates, "cold", "plain"),
    )


async def bench_missing(dsn: str, report: Report, args: argparse.Namespace) -> None:
    print("\n[6] get_missing_fields, 50 requirements, vs the two raw queries it needs")
    store = await migrated_store(dsn)
    await store.setup()
    raw = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
    try:
        tenant, agent, scenario, profile = await missing_fields_setup(store)
        assert len(await raw.fetch(RAW_REQUIREMENTS, tenant, scenario)) == 50
        assert len(await raw.fetch(RAW_DEFINITIONS, tenant, agent)) == 50

        async def raw_queries() -> Any:
            return (
                await raw.fetch(RAW_REQUIREMENTS, tenant, scenario),
                await raw.fetch(RAW_DEFINITIONS, tenant, agent),
            )

        base, cand, r = await paired(
            raw_queries,
            lambda: store.get_missing_fields(tenant, profile, scenario),
            args.pairs,
            args.seconds / args.pairs / 2,
        )
        print(f"  raw queries {base.median:9,.0f}/s, get_missing_fields {cand.median:9,.0f}/s")
        report.figure(
            "pg get_missing_fields vs its 2 raw queries", r.inverse(), "<= 1.5", cost=True
        )
        # for information: the store's own statement (requirements joined with the checks)
        # sent raw, so the ratio is the store's work beyond it
        base, cand, r = await paired(
            lambda: raw.fetch(GET_REQUIREMENT_CHECKS, tenant, scenario, None),
            lambda: store.get_missing_fields(tenant, profile, scenario),
            args.pairs,
            args.seconds / args.pairs / 2,
        )
        report.figure("pg get_missing_fields vs its own statement sent raw", r.inverse(), cost=True)
        # for information: handed a profile carrying its history (issue 13: 25x)
        full = await store.get_by_id(tenant, profile.id, include_history=True)
        assert full is not None
        base, cand, r = await paired(
            raw_queries,
            lambda: store.get_missing_fields(tenant, full, scenario),
            args.pairs,
            args.seconds / args.pairs / 2,
        )
        report.figure("pg get_missing_fields (profile with history) vs raw", r.inverse(), cost=True)
    finally:
        await raw.close()
        await store.aclose()


SECTIONS = {
    "read": bench_reads,
    "scale": None,  # depth and tenant size
    "update": bench_update,
    "expire": bench_expire,
    "crypto": bench_crypto,
    "missing": bench_missing,
    "peer": bench_peer,
}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per figure, all rounds")
    parser.add_argument("--pairs", type=int, default=30, help="paired rounds per figure")
    parser.add_argument("--expire-rows", type=int, default=1_000_000)
    parser.add_argument("--expire-pairs", type=int, default=3)
    parser.add_argument(
        "--expire-large-rows",
        type=int,
        default=3_000_000,
        help="rows of the large tenant expired under statement_timeout 3s (0: skip)",
    )
    parser.add_argument("--expire-large-pairs", type=int, default=3)
    parser.add_argument("--expire-batch", type=int, default=1_000, help="rows per batch")
    parser.add_argument(
        "--tenant-sizes", default="1000,10000,100000", help="profiles, comma-separated"
    )
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    parser.add_argument(
        "--only",
        choices=["read1", *SECTIONS],
        help="run one section (read1: the single-connection read figure alone)",
    )
    parser.add_argument("--worker", choices=["raw", "store"], help=argparse.SUPPRESS)
    for option in ("--dsn", "--tenant", "--profile", "--customer"):
        parser.add_argument(option, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        await worker(args)
        return 0
    report = Report("postgres_bench.py")
    server = admin_dsn()
    name = await create_database(server, prefix="ccvault_bench")
    dsn = dsn_with_database(server, name)
    print(f"database {name} on {server}")
    wanted = "read" if args.only == "read1" else args.only
    try:
        for section, run in SECTIONS.items():
            if wanted not in (None, section):
                continue
            if section == "scale":
                await bench_depth(dsn, report, args)
                await bench_tenant_size(dsn, report, args)
                await bench_curves(dsn, report, args)
            else:
                assert run is not None
                await run(dsn, report, args)
    finally:
        await drop_database(server, name)
    report.summary()
    if not (args.no_results or args.only):  # a partial run replaces neither
        plot(report, Path(__file__).with_name("postgres_scale.png"))
        write_results(report)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
