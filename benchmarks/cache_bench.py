"""CachedProfileStore hits against raw Redis GET baselines and the uncached PostgreSQL read,
in paired interleaved rounds; and the hit ratio of a realistic 95/5 read/write mix.

    .venv/bin/python benchmarks/cache_bench.py [--seconds 16] [--pairs 30] [--profiles 200]
        [--mix-operations 20000] [--no-results]

The stack is the production one without encryption: ``CachedProfileStore`` over a
``PostgresProfileStore`` (a database of its own on CCVAULT_TEST_POSTGRES_DSN's server,
default the local one, dropped at the end) and real Redis (127.0.0.1:6379 or
$CCVAULT_BENCH_REDIS_URL) under a key prefix of its own, deleted afterwards.

Every round runs each of these for a moment, the order rotating round by round:

* ``GET`` of the profile's JSON body (the same 50-field profile, ``model_dump_json``) +
  ``orjson.loads``: the least any Redis cache must do;
* ``GET`` of that body + ``CustomerProfile.model_validate_json``;
* cache hits through the public API: ``get_by_id``, ``get_by_customer_id``,
  ``get_by_channel_identity``, served by the near tier of a store with
  ``near_cache_invalidation = "push"`` (Redis pushes invalidations to a tracking
  connection: no Redis round trip, a copy of the kept profile) — the goal rows;
* the same three hits through a store in the default ``"check"`` mode (one GET of the
  tenant's generation per hit, then the copy), labelled "check mode", for information;
* ``get_by_id`` through a store with the near tier off (one MGET and the trusted decode of
  the body), for information;
* the same three reads from the PostgreSQL store with no cache in front.

Then, for information, how long after another process's ``update_field`` returned a
push-mode instance has processed its invalidation (median, p90, max over
``--delivery-rounds`` writes, 500 by default), the window in which push mode may still
serve the old copy.

Per round, each push-mode hit is divided by GET + orjson (goal >= 0.8x), by GET + pydantic
(info) and by the uncached read of the same lookup (goal >= 3x); the check-mode hits get the
same two ratios as information rows. The medians, spreads and pair counts are printed and
written to ``benchmarks/RESULTS.md`` unless ``--no-results``.
Not a test: nothing here runs under ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from _common import FIELDS, Report, Spread, bench_field, fill, interleaved, ratio, write_results
from redis.asyncio import Redis

from ccvault import metrics
from ccvault.cache import CachedProfileStore
from ccvault.models import Channel, CustomerProfile
from ccvault_postgres import PostgresProfileStore, PostgresSettings
from ccvault_postgres.testing import admin_dsn, create_database, drop_database, dsn_with_database

REDIS_URL = os.environ.get("CCVAULT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
LOOKUPS = ("get_by_id", "get_by_customer_id", "get_by_channel_identity")


def sample(name: str, tenant: uuid.UUID) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"tenant_id": str(tenant)}) or 0.0


async def bench_hits(
    store: CachedProfileStore,
    check: CachedProfileStore,
    far: CachedProfileStore,
    backend: PostgresProfileStore,
    client: Redis,
    prefix: str,
    report: Report,
    args: argparse.Namespace,
) -> None:
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, "+15550000001")
    await fill(store, tenant, profile.id)
    loaded = await store.get_by_id(tenant, profile.id)
    assert loaded is not None and len(loaded.fields) == FIELDS
    identity = loaded.channel_identities[0]
    channel, user = identity.channel, identity.channel_user_id
    raw_key = f"{prefix}raw:{profile.id}"
    payload = loaded.model_dump_json()
    await client.set(raw_key, payload)

    async def get_orjson() -> Any:
        data = await client.get(raw_key)
        assert data is not None
        return orjson.loads(data)

    async def get_pydantic() -> CustomerProfile:
        data = await client.get(raw_key)
        assert data is not None
        return CustomerProfile.model_validate_json(data)

    def reads(source: Any) -> dict[str, Any]:
        return {
            "get_by_id": lambda: source.get_by_id(tenant, profile.id),
            "get_by_customer_id": lambda: source.get_by_customer_id(tenant, loaded.customer_id),
            "get_by_channel_identity": lambda: source.get_by_channel_identity(
                tenant, channel, user
            ),
        }

    ops: dict[str, Any] = {"GET+orjson": get_orjson, "GET+pydantic": get_pydantic}
    ops |= {f"hit {name}": op for name, op in reads(store).items()}
    # the same hits in "check" mode: one GET of the tenant's generation per hit
    ops |= {f"hit {name}, check mode": op for name, op in reads(check).items()}
    # the same hit with the near tier off: one MGET and the trusted decode of the body
    ops["hit get_by_id, near tier off"] = lambda: far.get_by_id(tenant, profile.id)
    ops |= {f"uncached {name}": op for name, op in reads(backend).items()}
    # push mode: its near copies are trusted once the tracking connection is up
    await store.get_by_id(tenant, profile.id)  # starts the tracking connection
    deadline = time.monotonic() + 10
    while not store.tracking_healthy:
        if time.monotonic() > deadline:
            raise RuntimeError("the push-mode tracking connection did not come up")
        await asyncio.sleep(0.01)
    checked = [f"{name}, check mode" for name in LOOKUPS]
    for name in [*LOOKUPS, *checked, "get_by_id, near tier off"]:  # body, pointers, near
        for _ in range(2):
            found = await ops[f"hit {name}"]()
            assert found is not None and len(found.fields) == FIELDS
    misses_before = sample("profile_cache_misses_total", tenant)
    hits_before = sample("profile_cache_hits_total", tenant)
    print(f"serialized {FIELDS}-field profile: {len(payload):,} bytes")
    rates = await interleaved(ops, args.pairs, args.seconds / args.pairs / len(ops))
    # every timed read through the cache was a hit
    assert sample("profile_cache_misses_total", tenant) == misses_before
    assert sample("profile_cache_hits_total", tenant) > hits_before
    for name, values in rates.items():
        print(f"  {name:<32} {Spread.of(values).median:9,.0f} ops/s (median of rounds)")
    for name in LOOKUPS:
        hit = f"hit {name}"
        report.figure(
            f"cache hit {name} (push mode) vs GET+orjson", ratio(rates, hit, "GET+orjson"), ">= 0.8"
        )
        report.figure(
            f"cache hit {name} (push mode) vs GET+pydantic", ratio(rates, hit, "GET+pydantic")
        )
        report.figure(
            f"cache hit {name} (push mode) vs uncached PostgreSQL",
            ratio(rates, hit, f"uncached {name}"),
            ">= 3",
        )
    for name in LOOKUPS:
        hit = f"hit {name}, check mode"
        report.figure(
            f"cache hit {name} (check mode) vs GET+orjson", ratio(rates, hit, "GET+orjson")
        )
        report.figure(
            f"cache hit {name} (check mode) vs uncached PostgreSQL",
            ratio(rates, hit, f"uncached {name}"),
        )
    report.figure(
        "cache hit get_by_id, near tier off (MGET + decode), vs GET+orjson",
        ratio(rates, "hit get_by_id, near tier off", "GET+orjson"),
    )
    report.figure(
        "GET+pydantic vs GET+orjson (what validation costs)",
        ratio(rates, "GET+pydantic", "GET+orjson"),
    )
    report.notes.append(f"cached body: the {FIELDS}-field profile, {len(payload):,} bytes of JSON")


async def bench_mix(store: CachedProfileStore, report: Report, args: argparse.Namespace) -> None:
    """95% reads (a random profile, a random lookup) / 5% update_field over many profiles."""
    tenant = uuid.uuid4()
    rng = random.Random(1)
    people = []
    for n in range(args.profiles):
        person = await store.get_or_create(tenant, Channel.SMS, f"+1666{n:07d}")
        for i in range(10):
            await store.update_field(tenant, person.id, bench_field(i))
        people.append(person)
    hits0 = sample("profile_cache_hits_total", tenant)
    misses0 = sample("profile_cache_misses_total", tenant)
    operations, writes = args.mix_operations, 0
    start = time.perf_counter()
    for _ in range(operations):
        person = rng.choice(people)
        roll = rng.random()
        if roll < 0.05:
            await store.update_field(tenant, person.id, bench_field(rng.randrange(10), writes))
            writes += 1
        elif roll < 0.40:
            await store.get_by_id(tenant, person.id)
        elif roll < 0.70:
            await store.get_by_customer_id(tenant, person.customer_id)
        else:
            ident = person.channel_identities[0]
            await store.get_by_channel_identity(tenant, ident.channel, ident.channel_user_id)
    elapsed = time.perf_counter() - start
    hits = sample("profile_cache_hits_total", tenant) - hits0
    misses = sample("profile_cache_misses_total", tenant) - misses0
    line = (
        f"95/5 mix over {args.profiles} profiles, {operations:,} operations ({writes} writes): "
        f"hit ratio {hits / (hits + misses):.1%} ({hits:.0f} hits, {misses:.0f} misses), "
        f"{operations / elapsed:,.0f} ops/s"
    )
    print(line)
    report.notes.append(line)


def _delivery_writer(dsn: str, prefix: str, tenant: str, profile: str, pipe: Any) -> None:
    """The other instance of bench_push_delivery, in a process of its own: on each "go" it
    runs update_field and sends back the moment the call returned (``time.perf_counter``
    is the system-wide monotonic clock on Linux: comparable between processes)."""

    async def run() -> None:
        backend = PostgresProfileStore(PostgresSettings(dsn=dsn, min_pool_size=1, max_pool_size=1))
        store = CachedProfileStore(backend, Redis.from_url(REDIS_URL), key_prefix=prefix)
        async with store:
            n = 0
            while pipe.recv() == "go":
                await store.update_field(uuid.UUID(tenant), uuid.UUID(profile), bench_field(0, n))
                pipe.send(time.perf_counter())
                n += 1
        await store.redis.aclose()

    asyncio.run(run())


async def bench_push_delivery(
    reader: CachedProfileStore, dsn: str, report: Report, rounds: int
) -> None:
    """How long after another process's write returns this push-mode instance has its
    invalidation (push mode's window: until then its near copy may still be served). The
    writer is a process of its own with its own cache over the same database and Redis; the
    reader holds a trusted near copy, and its event loop is polled (yielding, bounded at
    1 s) until the pushed invalidation was processed."""
    tenant = uuid.uuid4()
    profile = await reader.get_or_create(tenant, Channel.WHATSAPP, "+15550000009")
    here, there = multiprocessing.get_context("spawn").Pipe()
    writer = multiprocessing.get_context("spawn").Process(
        target=_delivery_writer, args=(dsn, reader.key_prefix, str(tenant), str(profile.id), there)
    )
    writer.start()
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    early = late = 0
    try:
        for _ in range(rounds):
            await reader.sync_invalidations()
            for _ in range(2):  # the second read stores the copy the tracking session trusts
                await reader.get_by_id(tenant, profile.id)
            seen = reader._inval_seq
            here.send("go")
            started = time.perf_counter()
            # polled: the measured thing is when this loop's tracking task has read the
            # push, and nothing signals that but its invalidation counter
            while reader._inval_seq == seen and time.perf_counter() - started < 1.0:  # noqa: ASYNC110
                await asyncio.sleep(0)
            arrived = time.perf_counter()
            returned: float = await loop.run_in_executor(None, here.recv)
            if reader._inval_seq == seen:
                late += 1
            elif arrived < returned:
                early += 1  # processed before the writer's call had returned
                delays.append(0.0)
            else:
                delays.append(arrived - returned)
        here.send("stop")
    finally:
        await loop.run_in_executor(None, writer.join, 30)
        if writer.is_alive():
            writer.kill()
    if not delays:
        line = f"push mode: no invalidation of {rounds} writes arrived within 1 s"
    else:
        delays.sort()
        line = (
            f"push mode: another process's write reached this instance's near tier "
            f"{delays[len(delays) // 2] * 1e6:,.0f} us (median; p90 "
            f"{delays[len(delays) * 9 // 10] * 1e6:,.0f} us, max {delays[-1] * 1e6:,.0f} us, "
            f"n={len(delays)}) after the writer's update_field returned ({early} before it "
            f"returned, counted as 0; {late} not within 1 s)"
        )
    print(line)
    report.notes.append(line)


async def main(args: argparse.Namespace) -> int:
    report = Report("cache_bench.py")
    server = admin_dsn()
    name = await create_database(server, prefix="ccvault_bench")
    dsn = dsn_with_database(server, name)
    client = Redis.from_url(REDIS_URL)
    prefix = f"ccvault-bench:{uuid.uuid4().hex}:"
    backend = PostgresProfileStore(
        PostgresSettings(dsn=dsn, min_pool_size=1, max_pool_size=1, migrate_on_start=True)
    )
    # each near-tier store has a client of its own (its connect hook learns the run tag)
    store = CachedProfileStore(
        backend,
        Redis.from_url(REDIS_URL),
        key_prefix=prefix,
        close_client=True,
        near_cache_invalidation="push",
    )
    check = CachedProfileStore(backend, client, key_prefix=prefix)
    far = CachedProfileStore(backend, client, key_prefix=prefix, near_cache_size=0)
    print(f"database {name} on {server}; Redis {REDIS_URL} prefix {prefix}")
    try:
        async with store:  # check and far need no closing: no background work, shared backend
            await bench_hits(store, check, far, backend, client, prefix, report, args)
            if args.delivery_rounds:
                await bench_push_delivery(store, dsn, report, args.delivery_rounds)
            if args.mix_operations:
                await bench_mix(store, report, args)
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await drop_database(server, name)
    report.summary()
    if not args.no_results:
        write_results(report, Path(__file__).with_name("RESULTS.md"))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=16.0, help="all hit rounds together")
    parser.add_argument("--pairs", type=int, default=30, help="interleaved rounds")
    parser.add_argument("--profiles", type=int, default=200)
    parser.add_argument("--mix-operations", type=int, default=20_000, help="0: skip the mix")
    parser.add_argument(
        "--delivery-rounds", type=int, default=500, help="push-mode delivery delay (0: skip)"
    )
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    sys.exit(asyncio.run(main(parser.parse_args())))
