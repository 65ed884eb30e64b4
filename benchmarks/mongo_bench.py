"""MongoDB provider scale curves on the in-process EMULATION (mongomock), not a server.

    .venv/bin/python benchmarks/mongo_bench.py [--seconds 4] [--pairs 12]
        [--tenant-sizes 100,1000,10000,100000] [--max-load-seconds 120] [--no-results]

There is no MongoDB server on this machine class: the provider runs against
``ccvault_mongo.emulation.EmulatedMongoClient`` (mongomock in process, transactions emulated
by serial execution), as its contract tests do. Every figure printed here says
"emulation": the curves show how the *provider's own code* scales (its queries, its codec,
how many documents it touches per call), not what a MongoDB server would do — mongomock
scans collections instead of using indexes, so the tenant-size curve mostly measures that.

Curves (through the public API, interleaved rounds, median and min-max ops/s):
history depth (0/10/100 versions of 10 fields), profile size (10/50/200 fields), chain
depth (1/10/50 links), tenant size (profiles; loaded through ``get_or_create``: a size whose
loading would exceed ``--max-load-seconds`` is skipped with a printed reason — on the
emulation, 10,000 and 100,000 usually are). Each ``get_or_create`` of the emulation scans
the tenant, so loading grows with the square of the size: the estimate from the last size
loaded is quadratic, and a load that still passes the bound is stopped there and skipped.
Writes its part of RESULTS.md and ``curves/mongo_bench.json`` unless ``--no-results``.
Not a test: nothing here runs under ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

from _common import (
    TENANT_SIZE,
    Report,
    Spread,
    interleaved,
    scale_curves,
    scale_point,
    write_results,
)

from ccvault.models import Channel
from ccvault.store import StoreRules
from ccvault_mongo import MongoProfileStore, MongoSettings
from ccvault_mongo.emulation import EmulatedMongoClient

PROVIDER = "MongoDB (emulation)"


async def new_store() -> MongoProfileStore:
    store = MongoProfileStore(
        MongoSettings(database=f"bench_{uuid.uuid4().hex[:8]}"),
        client=EmulatedMongoClient(max_yields=1, seed=1),
        rules=StoreRules(max_derivation_chain_depth=101),
    )
    await store.migrate()
    await store.setup()
    return store


def skipped(report: Report, size: int, why: str, args: argparse.Namespace) -> None:
    line = (
        f"emulation: tenant of {size:,} profiles skipped — {why} "
        f"(--max-load-seconds {args.max_load_seconds:g})"
    )
    print(f"  {line}")
    report.notes.append(line)


async def tenant_curve(report: Report, args: argparse.Namespace) -> None:
    sizes = sorted(int(x) for x in args.tenant_sizes.split(","))
    stores: dict[int, tuple[MongoProfileStore, uuid.UUID, uuid.UUID]] = {}
    # (size, seconds) of the last tenant loaded: the next one's load time is estimated
    # from it, quadratically (every get_or_create of the emulation scans the tenant)
    last: tuple[int, float] | None = None
    stopped = 0  # the size whose load was stopped: every bigger one is skipped
    try:
        for size in sizes:
            estimate = None if last is None else last[1] * (size / last[0]) ** 2
            if stopped:
                skipped(report, size, f"the load of {stopped:,} profiles was stopped", args)
                continue
            if estimate is not None and estimate > args.max_load_seconds:
                skipped(report, size, f"loading it would take about {estimate:,.0f}s", args)
                continue
            store = await new_store()
            tenant = uuid.uuid4()
            started = time.perf_counter()
            deadline = started + args.max_load_seconds
            loaded = 0
            while loaded < size - 1 and time.perf_counter() <= deadline:
                await store.get_or_create(tenant, Channel.SMS, f"+1777{loaded:08d}")
                loaded += 1
            if loaded < size - 1:
                await store.aclose()
                skipped(report, size, f"its load was stopped after {loaded:,} profiles", args)
                stopped = size
                continue
            measured = await store.get_or_create(tenant, Channel.WEB, "measured")
            seconds = time.perf_counter() - started
            last = (size, seconds)
            print(f"  emulation: {size:,} profiles loaded at {size / seconds:,.0f} profiles/s")
            stores[size] = (store, tenant, measured.customer_id)
        rates = await interleaved(
            {
                str(size): (lambda s=s, t=t, c=c: s.get_by_customer_id(t, c))
                for size, (s, t, c) in stores.items()
            },
            args.pairs,
            args.seconds / args.pairs / max(1, len(stores)),
        )
        for size in stores:
            spread = Spread.of(rates[str(size)])
            scale_point(report, TENANT_SIZE, PROVIDER, size, spread)
            print(f"  {PROVIDER}, {TENANT_SIZE}: {size:>7,} -> {spread.median:9,.0f} ops/s")
    finally:
        for store, *_ in stores.values():
            await store.aclose()


async def main(args: argparse.Namespace) -> int:
    report = Report("mongo_bench.py")
    print(f"{PROVIDER}: mongomock in process — every figure below is of the EMULATION")
    store = await new_store()
    try:
        await scale_curves(
            store, report, PROVIDER, pairs=args.pairs, seconds=args.seconds, chains=(1, 10, 50)
        )
    finally:
        await store.aclose()
    await tenant_curve(report, args)
    report.notes.append(
        "MongoDB figures are of the in-process emulation (mongomock), not a MongoDB server: "
        "they show the provider code's own scaling; mongomock scans instead of using indexes."
    )
    report.summary()
    if not args.no_results:
        write_results(report, Path(__file__).with_name("RESULTS.md"))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per curve, all rounds")
    parser.add_argument("--pairs", type=int, default=6, help="interleaved rounds per curve")
    parser.add_argument("--tenant-sizes", default="100,1000,10000,100000")
    parser.add_argument("--max-load-seconds", type=float, default=120.0)
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    sys.exit(asyncio.run(main(parser.parse_args())))
