"""In-memory provider: per-operation cost against tenant size, loading, memory, in one run.

    .venv/bin/python benchmarks/inmemory_bench.py [--seconds 5] [--pairs 30]
        [--sizes 1000,10000,100000] [--load-sizes 250,2000,20000] [--load-pairs 3]
        [--load-beyond 100000]
        [--no-results] [--only lookup|load|memory|depth|chain]

Every profile of a tenant is built through the public API (``get_or_create`` and
``update_field`` of 3 fields), so loading itself is measured too. Figures (paired
interleaved rounds, see ``_common``):

1. lookups by channel identity and by customer id and ``update_field`` (supersede) in
   tenants of 1k / 10k / 100k profiles, rotating over 1,000 of the tenant's profiles:
   the 100k-tenant over the 1k-tenant throughput, goal >= 0.8 (per-operation cost independent
   of tenant size); each size also against a raw baseline doing the same work on plain
   dicts (a dict lookup and a copy of the profile's records; a dict-of-lists append and
   the supersede of the previous record), information only;
2. loading: time per profile for tenants of 250 / 2,000 / 20,000 profiles (fresh store per
   run), the biggest over the smallest, goal <= 1.25x cost (linear); for information, the
   same pair with CPython's cyclic garbage collector paused (the provider's own work: its
   full collections walk every live object, and none runs at 250 profiles), and 100,000
   over 20,000 profiles (whether the time per profile keeps growing past that onset);
3. memory per field version (``tracemalloc``: everything the store keeps, the versions
   created inside the traced region) over the version's JSON size, goal <= 2;
4. scale curves: reads and ``get_field`` against the history depth of one field
   (1 / 10 / 100 / 1,000 versions), ``get_derivation_chain`` against the chain depth
   (1 / 10 / 100 links).

The ``--sizes`` / ``--load-sizes`` options exist to measure the former provider (quadratic
loading) on sizes it can finish: the "before" figures of issue 13 were taken that way, from
a worktree of the previous commit (``PYTHONPATH`` pointing at its ``providers/inmemory/src``).

Writes its table to ``benchmarks/RESULTS.md`` ("## Store throughput") unless
``--no-results``. Not a test: nothing here runs under ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import random
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from _common import (
    Report,
    Spread,
    bench_field,
    interleaved,
    paired_runs,
    plot,
    ratio,
    write_results,
)

from ccvault.models import Channel, ItemStatus, ProfileField, SourceType
from ccvault.store_rules import StoreRules
from ccvault_inmemory import InMemoryProfileStore

FIELDS_PER_PROFILE = 3
ROTATION = 1_000
SEED = 13


def identity_of(n: int) -> str:
    return f"+1{n:010d}"


async def load_tenant(store: InMemoryProfileStore, tenant: UUID, profiles: int) -> list[Any]:
    """``profiles`` profiles of ``FIELDS_PER_PROFILE`` fields each, through the public API;
    returns the profiles as ``get_or_create`` gave them."""
    made = []
    for n in range(profiles):
        person = await store.get_or_create(tenant, Channel.SMS, identity_of(n))
        for i in range(FIELDS_PER_PROFILE):
            await store.update_field(tenant, person.id, bench_field(i))
        made.append(person)
    return made


# ---------------------------------------------------------------------------------------
# raw baseline: the same work on plain dicts
# ---------------------------------------------------------------------------------------


class RawTenant:
    """Identity -> profile id, customer id -> profile id, profile id -> name -> list of
    version records (plain dicts): what the provider keeps, without a provider."""

    def __init__(self) -> None:
        self.identities: dict[tuple[Channel, str], UUID] = {}
        self.customers: dict[UUID, UUID] = {}
        self.versions: dict[UUID, dict[str, list[dict[str, Any]]]] = {}

    def add(self, profile_id: UUID, customer_id: UUID, identity: str) -> None:
        self.identities[(Channel.SMS, identity)] = profile_id
        self.customers[customer_id] = profile_id
        self.versions[profile_id] = {}

    def update(self, profile_id: UUID, item: ProfileField) -> UUID:
        record = item.model_dump()
        versions = self.versions[profile_id].setdefault(item.name, [])
        if versions and versions[-1]["status"] is ItemStatus.ACTIVE:
            versions[-1] = {
                **versions[-1],
                "status": ItemStatus.SUPERSEDED,
                "superseded_by_id": item.id,
                "superseded_at": item.updated_at,
            }
        versions.append(record)
        return item.id

    def read(self, profile_id: UUID) -> dict[str, dict[str, Any]]:
        """A private copy of every ACTIVE record of the profile."""
        return {
            name: dict(found[-1])
            for name, found in self.versions[profile_id].items()
            if found[-1]["status"] is ItemStatus.ACTIVE
        }


# ---------------------------------------------------------------------------------------
# 1. lookups and updates against tenant size
# ---------------------------------------------------------------------------------------


async def bench_lookup(report: Report, args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"\n[1] lookups and update_field in tenants of {', '.join(f'{s:,}' for s in sizes)}")
    store = InMemoryProfileStore()
    rng = random.Random(SEED)
    setups: dict[int, tuple[UUID, list[Any], RawTenant]] = {}
    for size in sizes:
        tenant = uuid4()
        started = time.perf_counter()
        made = await load_tenant(store, tenant, size)
        print(f"  {size:,} profiles loaded in {time.perf_counter() - started:.1f}s")
        raw = RawTenant()
        for n, person in enumerate(made):
            raw.add(person.id, person.customer_id, identity_of(n))
            for i in range(FIELDS_PER_PROFILE):
                raw.update(person.id, bench_field(i))
        picked = rng.sample(range(size), min(ROTATION, size))
        setups[size] = (tenant, [(n, made[n]) for n in picked], raw)
    versions = itertools.count(1)

    def ops_for(kind: str) -> dict[str, Callable[[], Awaitable[Any]]]:
        ops: dict[str, Callable[[], Awaitable[Any]]] = {}
        for size, (tenant, picked, raw) in setups.items():
            turn = itertools.cycle(picked)
            raw_turn = itertools.cycle(picked)

            if kind == "identity":

                async def store_op(t: UUID = tenant, it: Any = turn) -> Any:
                    n, _ = next(it)
                    return await store.get_by_channel_identity(t, Channel.SMS, identity_of(n))

                async def raw_op(r: RawTenant = raw, it: Any = raw_turn) -> Any:
                    n, _ = next(it)
                    return r.read(r.identities[(Channel.SMS, identity_of(n))])

            elif kind == "customer":

                async def store_op(t: UUID = tenant, it: Any = turn) -> Any:
                    _, person = next(it)
                    return await store.get_by_customer_id(t, person.customer_id)

                async def raw_op(r: RawTenant = raw, it: Any = raw_turn) -> Any:
                    _, person = next(it)
                    return r.read(r.customers[person.customer_id])

            else:

                async def store_op(t: UUID = tenant, it: Any = turn) -> Any:
                    _, person = next(it)
                    return await store.update_field(t, person.id, bench_field(0, next(versions)))

                async def raw_op(r: RawTenant = raw, it: Any = raw_turn) -> Any:
                    _, person = next(it)
                    return r.update(person.id, bench_field(0, next(versions)))

            ops[f"store {size}"] = store_op
            ops[f"raw {size}"] = raw_op
        return ops

    labels = {
        "identity": "get_by_channel_identity",
        "customer": "get_by_customer_id",
        "update": "update_field",
    }
    for kind, label in labels.items():
        ops = ops_for(kind)
        rates = await interleaved(ops, args.pairs, args.seconds / args.pairs / len(ops))
        for size in sizes:
            spread = Spread.of(rates[f"store {size}"])
            report.point(f"inmemory {label} vs tenant size (profiles)", size, spread)
            print(f"  {label} {size:>7,} profiles: {spread.median:9,.0f}/s", flush=True)
        small, big = sizes[0], sizes[-1]
        report.figure(
            f"inmemory {label}, tenant of {big:,} vs {small:,} profiles",
            ratio(rates, f"store {big}", f"store {small}"),
            ">= 0.8",
        )
        report.figure(
            f"inmemory {label} vs raw dicts ({big:,} profiles)",
            ratio(rates, f"store {big}", f"raw {big}"),
        )


# ---------------------------------------------------------------------------------------
# 2. loading
# ---------------------------------------------------------------------------------------


async def load_seconds_per_profile(profiles: int, *, collector: bool = True) -> float:
    """Seconds per profile to load a fresh tenant of ``profiles``; ``collector`` False:
    with CPython's cyclic garbage collector paused meanwhile (a diagnosis: the provider's
    own work alone)."""
    store = InMemoryProfileStore()
    gc.collect()
    if not collector:
        gc.disable()
    try:
        started = time.perf_counter()
        await load_tenant(store, uuid4(), profiles)
        return (time.perf_counter() - started) / profiles
    finally:
        gc.enable()


async def bench_load(report: Report, args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.load_sizes.split(",")]
    print(f"\n[2] loading: seconds per profile at {', '.join(f'{s:,}' for s in sizes)} profiles")
    small = sizes[0]
    for size in sizes[1:]:
        base, cand, cost = await paired_runs(
            lambda: load_seconds_per_profile(small),
            lambda size=size: load_seconds_per_profile(size),
            args.load_pairs,
        )
        # the curve in the common unit (ops/s): profiles loaded per second
        if size == sizes[1]:
            report.point("inmemory loading, profiles/s vs tenant size", small, base.inverse())
        report.point("inmemory loading, profiles/s vs tenant size", size, cand.inverse())
        print(
            f"  {small:,}: {base.median * 1e3:.3f} ms/profile   "
            f"{size:,}: {cand.median * 1e3:.3f} ms/profile",
            flush=True,
        )
        report.figure(
            f"inmemory load time per profile, {size:,} vs {small:,} profiles",
            cost,
            "<= 1.25",
            cost=True,
            detail=f"{cand.median * 1e3:.3f} vs {base.median * 1e3:.3f} ms per profile",
        )
    # where the excess of the biggest size comes from: the same pair with the collector
    # paused (full collections walk every live object; at the smallest size none runs),
    # and the per-profile time further on (flat: linear past the collector's onset)
    big = sizes[-1]
    base, cand, cost = await paired_runs(
        lambda: load_seconds_per_profile(small, collector=False),
        lambda: load_seconds_per_profile(big, collector=False),
        args.load_pairs,
    )
    report.figure(
        f"inmemory load time per profile, {big:,} vs {small:,} profiles, collector paused",
        cost,
        detail=f"{cand.median * 1e3:.3f} vs {base.median * 1e3:.3f} ms per profile",
        cost=True,
    )
    if args.load_beyond:
        base, cand, cost = await paired_runs(
            lambda: load_seconds_per_profile(big),
            lambda: load_seconds_per_profile(args.load_beyond),
            args.load_pairs,
        )
        report.figure(
            f"inmemory load time per profile, {args.load_beyond:,} vs {big:,} profiles",
            cost,
            detail=f"{cand.median * 1e3:.3f} vs {base.median * 1e3:.3f} ms per profile",
            cost=True,
        )


# ---------------------------------------------------------------------------------------
# 3. memory per field version
# ---------------------------------------------------------------------------------------


async def memory_per_version(versions: int) -> tuple[float, float]:
    """(bytes the store keeps per field version, mean JSON size of those versions)."""
    store = InMemoryProfileStore()
    tenant = uuid4()
    person = await store.get_or_create(tenant, Channel.WEB, "memory")
    await store.update_field(tenant, person.id, bench_field(0))
    json_bytes = 0
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for v in range(versions):
            item = bench_field(v % 50, v + 1)
            json_bytes += len(item.model_dump_json())
            await store.update_field(tenant, person.id, item)
        del item
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    history = await store.get_field_history(tenant, person.id, "field_01")
    assert len(history) == versions // 50, len(history)
    return kept / versions, json_bytes / versions


async def bench_memory(report: Report, args: argparse.Namespace) -> None:
    print("\n[3] memory per field version (tracemalloc) vs its JSON size")
    ratios, kept = [], []
    for _ in range(args.memory_runs):
        per_version, json_size = await memory_per_version(args.memory_versions)
        ratios.append(per_version / json_size)
        kept.append(per_version)
        print(f"  {per_version:,.0f} bytes per version, JSON {json_size:,.0f} bytes", flush=True)
    report.figure(
        "inmemory memory per field version / its JSON size",
        Spread.of(ratios),
        "<= 2",
        cost=True,
        detail=f"{Spread.of(kept).median:,.0f} bytes per version "
        f"({args.memory_versions:,} versions, tracemalloc)",
    )


# ---------------------------------------------------------------------------------------
# 4. scale curves: history depth, chain depth
# ---------------------------------------------------------------------------------------


async def bench_depth(report: Report, args: argparse.Namespace) -> None:
    depths = (1, 10, 100, 1_000)
    print(f"\n[4a] scale: reads with {' / '.join(map(str, depths))} versions of one field")
    store = InMemoryProfileStore()
    tenant = uuid4()
    reads: dict[str, Callable[[], Awaitable[Any]]] = {}
    gets: dict[str, Callable[[], Awaitable[Any]]] = {}
    for depth in depths:
        person = await store.get_or_create(tenant, Channel.WEB, f"depth-{depth}")
        for n in range(1, 10):
            await store.update_field(tenant, person.id, bench_field(n))
        for v in range(depth):
            await store.update_field(tenant, person.id, bench_field(0, v))

        def read(c: UUID = person.customer_id) -> Awaitable[Any]:
            return store.get_by_customer_id(tenant, c)

        def get(p: UUID = person.id) -> Awaitable[Any]:
            return store.get_field(tenant, p, "field_00")

        reads[str(depth)], gets[str(depth)] = read, get
    for label, ops in (("get_by_customer_id", reads), ("get_field", gets)):
        rates = await interleaved(ops, args.pairs, args.seconds / args.pairs / len(ops))
        for depth in depths:
            spread = Spread.of(rates[str(depth)])
            report.point(
                f"inmemory {label} vs history depth (versions of one field)", depth, spread
            )
            print(f"  {label} {depth:5d} versions: {spread.median:9,.0f}/s", flush=True)
        report.figure(
            f"inmemory {label}, {depths[-1]:,} vs 1 versions of the field",
            ratio(rates, str(depths[-1]), "1"),
        )


async def bench_chain(report: Report, args: argparse.Namespace) -> None:
    depths = (1, 10, 100)
    print(f"\n[4b] scale: get_derivation_chain of {' / '.join(map(str, depths))} links")
    store = InMemoryProfileStore(rules=StoreRules(max_derivation_chain_depth=max(depths)))
    tenant = uuid4()
    ops: dict[str, Callable[[], Awaitable[Any]]] = {}
    for depth in depths:
        person = await store.get_or_create(tenant, Channel.WEB, f"chain-{depth}")
        source: UUID | None = None
        for link in range(depth):
            item = ProfileField(
                name=f"link_{link:03d}",
                value=f"derived value {link}",
                source_item_id=source,
                source_item_type=None if source is None else SourceType.PROFILE_FIELD,
            )
            source = await store.update_field(tenant, person.id, item)
        assert source is not None
        chain = await store.get_derivation_chain(tenant, source, "profile_field")
        assert len(chain) == depth, (len(chain), depth)

        def walk(item_id: UUID = source) -> Awaitable[Any]:
            return store.get_derivation_chain(tenant, item_id, "profile_field")

        ops[str(depth)] = walk
    rates = await interleaved(ops, args.pairs, args.seconds / args.pairs / len(ops))
    for depth in depths:
        spread = Spread.of(rates[str(depth)])
        report.point("inmemory get_derivation_chain vs chain depth (links)", depth, spread)
        per_link = spread.median * depth
        print(f"  {depth:4d} links: {spread.median:9,.0f}/s ({per_link:,.0f} links/s)", flush=True)
    spread = Spread.of(
        [
            (long * depths[-1]) / short
            for long, short in zip(rates[str(depths[-1])], rates["1"], strict=True)
        ]
    )
    report.figure(
        f"inmemory chain walk, links/s at {depths[-1]} vs 1 link",
        spread,
        detail="linear walk: about 1.0 or more when each link costs the same",
    )


SECTIONS = ("lookup", "load", "memory", "depth", "chain")


async def main(args: argparse.Namespace) -> int:
    report = Report("inmemory_bench.py")
    report.notes.extend(args.note)
    wanted = set(SECTIONS) if args.only is None else {args.only}
    if "memory" in wanted:  # first: nothing else allocated yet
        await bench_memory(report, args)
    if "lookup" in wanted:
        await bench_lookup(report, args)
    if "load" in wanted:
        await bench_load(report, args)
    if "depth" in wanted:
        await bench_depth(report, args)
    if "chain" in wanted:
        await bench_chain(report, args)
    report.summary()
    if not (args.no_results or args.only):  # a partial run replaces neither
        plot(report, Path(__file__).with_name("inmemory_scale.png"))
        write_results(report)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per figure, all rounds")
    parser.add_argument("--pairs", type=int, default=30, help="paired rounds per figure")
    parser.add_argument("--sizes", default="1000,10000,100000", help="tenant sizes, profiles")
    parser.add_argument("--load-sizes", default="250,2000,20000", help="profiles per load run")
    parser.add_argument("--load-pairs", type=int, default=3, help="paired load runs per size")
    parser.add_argument(
        "--load-beyond",
        type=int,
        default=100_000,
        help="profiles of a last load compared with the biggest --load-sizes (0: none)",
    )
    parser.add_argument("--memory-versions", type=int, default=5_000)
    parser.add_argument("--memory-runs", type=int, default=3)
    parser.add_argument(
        "--note", action="append", default=[], help="a line for the results (e.g. before figures)"
    )
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--only", choices=SECTIONS, help="run one section (no RESULTS.md)")
    sys.exit(asyncio.run(main(parser.parse_args())))
