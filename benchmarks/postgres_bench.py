"""Speed of the PostgreSQL provider against raw asyncpg on the same server, in one run.

    .venv/bin/python benchmarks/postgres_bench.py [--seconds 3] [--expire-rows 1000000]
        [--only read1|read|update|expire]

Works in a database of its own (created on CCVAULT_TEST_POSTGRES_DSN's server, default the
local one on 5432, and dropped at the end). Prints every figure and the four ratios of
issue 4 against their targets:

1. ``get_by_customer_id`` of a profile with 50 active fields x 20 superseded versions:
   >= 0.5x the throughput of a raw asyncpg query fetching those 50 rows, with one
   connection and with 16 concurrent clients (4 client processes x 4 coroutines, each
   process with its own pool: one Python process driving 16 clients measures mostly its
   own CPU; that figure is printed too, for information);
2. the same read with 0 and with 100 versions per field: within 20% of each other;
3. ``update_field`` with supersede: >= 0.5x the throughput of the two raw statements;
4. ``expire_stale_fields`` over 1,000,000 fields, 100,000 due: within 1.5x of one raw UPDATE.

Throughput figures alternate baseline and candidate rounds and compare the median of the
per-pair ratios, so other load on the machine hits both alike. Not a test: nothing here
runs under ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from ccvault.models import Channel, ProfileField
from ccvault_postgres import PostgresProfileStore, PostgresSettings
from ccvault_postgres.testing import (
    admin_dsn,
    create_database,
    drop_database,
    dsn_with_database,
)

FIELDS = 50
RAW_READ = (
    "SELECT * FROM profile_fields WHERE tenant_id = $1 AND profile_id = $2 AND status = 'active'"
)
SCHEMA = "bench"
_results: list[tuple[str, float, str, bool]] = []


def report(name: str, ratio: float, target: str, ok: bool) -> None:
    _results.append((name, ratio, target, ok))
    print(f"  -> ratio {ratio:.3f} (target {target}): {'MET' if ok else 'NOT MET'}", flush=True)


async def throughput(
    operation: Callable[[], Awaitable[Any]], seconds: float, clients: int = 1
) -> float:
    """Operations per second of ``clients`` concurrent loops calling ``operation``."""
    for _ in range(20):  # warm up: prepared statements, pool connections, type caches
        await operation()
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await operation()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return done / (time.perf_counter() - start)


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


async def paired(
    baseline: Callable[[], Awaitable[float]], candidate: Callable[[], Awaitable[float]], pairs: int
) -> tuple[float, float, float]:
    """Median baseline rate, median candidate rate, and the median of per-pair ratios.

    Rounds alternate A-B, B-A, ... so drift and other load on the machine hit both alike; the
    ratio of each adjacent pair is what is compared.
    """
    base: list[float] = []
    cand: list[float] = []
    for number in range(pairs):
        if number % 2 == 0:
            base.append(await baseline())
            cand.append(await candidate())
        else:
            cand.append(await candidate())
            base.append(await baseline())
    ratios = [c / b for b, c in zip(base, cand, strict=True)]
    return statistics.median(base), statistics.median(cand), statistics.median(ratios)


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


async def bench_reads(dsn: str, seconds: float, single_only: bool = False) -> None:
    print("\n[1] get_by_customer_id, 50 active fields x 20 superseded versions, vs raw asyncpg")
    single = PostgresProfileStore(
        PostgresSettings(dsn=dsn, db_schema=SCHEMA, min_pool_size=1, max_pool_size=1)
    )
    many = PostgresProfileStore(
        PostgresSettings(dsn=dsn, db_schema=SCHEMA, min_pool_size=16, max_pool_size=16)
    )
    await single.setup()
    await many.setup()
    tenant = uuid.uuid4()
    profiles = {}
    for versions in (0, 20, 100):
        profile = await single.get_or_create(tenant, Channel.WEB, f"bench-{versions}")
        await load_versions(single, tenant, profile.id, versions)
        profiles[versions] = profile
    p20 = profiles[20]
    found = await single.get_by_customer_id(tenant, p20.customer_id)
    assert found is not None and len(found.fields) == FIELDS

    raw_sql = RAW_READ
    settings = {"search_path": SCHEMA}
    raw_conn = await asyncpg.connect(dsn, server_settings=settings)
    raw_pool = await asyncpg.create_pool(dsn, min_size=16, max_size=16, server_settings=settings)
    assert len(await raw_conn.fetch(raw_sql, tenant, p20.id)) == FIELDS

    async def raw_read() -> None:
        await raw_conn.fetch(raw_sql, tenant, p20.id)

    async def raw_pool_read() -> None:
        await raw_pool.fetch(raw_sql, tenant, p20.id)

    def store_read(
        store: PostgresProfileStore, customer: uuid.UUID
    ) -> Callable[[], Awaitable[Any]]:
        return lambda: store.get_by_customer_id(tenant, customer)

    # single connection
    raw_rate, ours, ratio = await paired(
        lambda: throughput(raw_read, seconds / 20),
        lambda: throughput(store_read(single, p20.customer_id), seconds / 20),
        20,
    )
    print(f"   1 client: raw 50-row query {raw_rate:9.0f}/s, get_by_customer_id {ours:9.0f}/s")
    report("read vs raw (1 connection)", ratio, ">= 0.5", ratio >= 0.5)
    if single_only:  # --only read1: the quick figure to iterate on
        await raw_conn.close()
        await raw_pool.close()
        await single.aclose()
        await many.aclose()
        return

    ids = [tenant, p20.id, p20.customer_id]
    raw_rate, ours, ratio = await paired(
        lambda: multiprocess_throughput("raw", dsn, ids, seconds / 4),
        lambda: multiprocess_throughput("store", dsn, ids, seconds / 4),
        4,
    )
    print(f"  16 clients ({WORKER_PROCESSES} processes x 4): raw {raw_rate:9.0f}/s,"
          f" get_by_customer_id {ours:9.0f}/s")  # fmt: skip
    report("read vs raw (16 clients)", ratio, ">= 0.5", ratio >= 0.5)

    # for information: 16 coroutines in ONE process measure that process's CPU, not the store
    raw_rate = await throughput(raw_pool_read, seconds / 2, 16)
    ours = await throughput(store_read(many, p20.customer_id), seconds / 2, 16)
    print(f"  (info) 16 coroutines in this one process: raw {raw_rate:9.0f}/s,"
          f" get_by_customer_id {ours:9.0f}/s, ratio {ours / raw_rate:.3f}")  # fmt: skip

    print("\n[2] the same read with 0 and with 100 versions per field (single connection)")
    zero, hundred, ratio = await paired(
        lambda: throughput(store_read(single, profiles[0].customer_id), seconds / 20),
        lambda: throughput(store_read(single, profiles[100].customer_id), seconds / 20),
        20,
    )
    print(f"  0 versions {zero:9.0f}/s, 100 versions {hundred:9.0f}/s")
    report("read 100 vs 0 versions", ratio, "within 0.8..1.2", 0.8 <= ratio <= 1.2)

    await raw_conn.close()
    await raw_pool.close()
    await single.aclose()
    await many.aclose()


async def bench_update(dsn: str, seconds: float) -> None:
    print("\n[3] update_field with supersede vs the two raw statements (single connection)")
    store = PostgresProfileStore(
        PostgresSettings(dsn=dsn, db_schema=SCHEMA, min_pool_size=1, max_pool_size=1)
    )
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

    raw_rate, ours, ratio = await paired(
        lambda: throughput(raw_update, seconds / 6),
        lambda: throughput(store_update, seconds / 6),
        6,
    )
    print(f"  raw UPDATE + INSERT {raw_rate:9.0f}/s, update_field {ours:9.0f}/s")
    report("update_field vs 2 raw statements", ratio, ">= 0.5", ratio >= 0.5)
    history = await store.get_field_history(tenant, profile, "counter")
    assert sum(1 for v in history if v.status.value == "active") == 1
    await raw.close()
    await store.aclose()


async def bench_expire(dsn: str, total: int) -> None:
    due = total // 10
    print(f"\n[4] expire_stale_fields over {total:,} fields, {due:,} due, vs one raw UPDATE")
    store = PostgresProfileStore(
        PostgresSettings(
            dsn=dsn, db_schema="bench_expire", min_pool_size=1, max_pool_size=1,
            statement_timeout_seconds=0,
        )
    )  # fmt: skip
    await store.setup()
    tenant = uuid.uuid4()
    profiles = [uuid.uuid4() for _ in range(total // 100)]
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

    timings: dict[str, list[float]] = {"raw": [], "ours": []}

    async def run_ours() -> None:
        await reset()
        start = time.perf_counter()
        count = await store.expire_stale_fields(tenant)
        timings["ours"].append(time.perf_counter() - start)
        assert count == due, count

    async def run_raw() -> None:
        await reset()
        start = time.perf_counter()
        status = await raw.execute(raw_update, tenant, datetime.now(UTC))
        timings["raw"].append(time.perf_counter() - start)
        assert status == f"UPDATE {due}", status

    for first, second in ((run_ours, run_raw), (run_raw, run_ours), (run_ours, run_raw)):
        await first()  # alternate the order, so caches and bloat treat both alike
        await second()
    raw_time, ours = min(timings["raw"]), min(timings["ours"])
    print(f"  raw UPDATE {raw_time:.3f}s, expire_stale_fields {ours:.3f}s (best of 3)")
    report("expire vs raw UPDATE (time)", ours / raw_time, "<= 1.5", ours <= 1.5 * raw_time)
    await raw.close()
    await store.aclose()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput figure")
    parser.add_argument("--expire-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--only",
        choices=["read1", "read", "update", "expire"],
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
    server = admin_dsn()
    name = await create_database(server, prefix="ccvault_bench")
    dsn = dsn_with_database(server, name)
    print(f"database {name} on {server}")
    started = time.perf_counter()
    try:
        if args.only in (None, "read", "read1"):
            await bench_reads(dsn, args.seconds, single_only=args.only == "read1")
        if args.only in (None, "update"):
            await bench_update(dsn, args.seconds)
        if args.only in (None, "expire"):
            await bench_expire(dsn, args.expire_rows)
    finally:
        await drop_database(server, name)
    print(f"\nsummary ({time.perf_counter() - started:.0f}s):")
    for label, ratio, target, ok in _results:
        print(f"  {label:<36} {ratio:7.3f}  target {target:<16} {'MET' if ok else 'NOT MET'}")
    return 0 if all(ok for *_, ok in _results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
