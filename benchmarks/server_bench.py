"""``ccvault serve`` under load on loopback, beside the same work done in-process.

    .venv/bin/python benchmarks/server_bench.py [--clients 64] [--requests 6000]
        [--seconds 30] [--read-share 0.8] [--provider sqlite|postgres]

A real server process (``ccvault serve`` on 127.0.0.1, embedded SQLite + PII encryption by
default; ``--provider postgres`` uses the local PostgreSQL in a throw-away database) and
``--clients`` concurrent HTTP clients (httpx, keep-alive), each working on its own
customer: ``--read-share`` of the calls read the profile (``GET /v1/profiles/{id}``), the
rest write a new version of a field (``POST /v1/profiles/{id}/fields``). The run is bounded
by ``--requests`` calls in total and by ``--seconds``. Then the same mix, the same
concurrency and the same count run in-process against a store opened by
``ccvault.open_store`` on the same kind of database. Printed per mode: calls, throughput,
p50 and p99 latency, errors; and remote/in-process ratios. Loopback only; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID, uuid4

import httpx

import ccvault
from ccvault.crypto import generate_key_entry
from ccvault.models import Channel, ProfileField
from ccvault.server.testing import embedded_config, running_server


@dataclass
class Run:
    mode: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def calls(self) -> int:
        return len(self.latencies) + self.errors

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


async def drive(
    run: Run,
    clients: int,
    total: int,
    seconds: float,
    read_share: float,
    read: Callable[[int], Awaitable[None]],
    write: Callable[[int, int], Awaitable[None]],
) -> None:
    """``clients`` workers share a budget of ``total`` calls and a deadline."""
    budget = total
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        nonlocal budget
        rng = random.Random(index)
        sequence = 0
        while budget > 0 and time.perf_counter() < deadline:
            budget -= 1
            sequence += 1
            started = time.perf_counter()
            try:
                if rng.random() < read_share:
                    await read(index)
                else:
                    await write(index, sequence)
            except Exception as exc:
                run.errors += 1
                kind = type(exc).__name__
                if isinstance(exc, httpx.HTTPStatusError):
                    kind = f"HTTP {exc.response.status_code} {exc.response.json().get('code')}"
                run.error_kinds[kind] = run.error_kinds.get(kind, 0) + 1
                continue
            run.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    run.elapsed = time.perf_counter() - started


def _field(sequence: int) -> ProfileField:
    return ProfileField(name=f"note_{sequence % 5}", value=f"value {sequence}")


async def remote(base_url: str, token: str, args: argparse.Namespace) -> Run:
    """Each client is its own httpx.AsyncClient with one keep-alive connection (one shared
    pool of 64 connections spends more CPU in the pool than the server spends serving)."""
    run = Run("HTTP (ccvault serve)")
    headers = {"Authorization": f"Bearer {token}"}
    clients = [
        httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=60,
        )
        for _ in range(args.clients)
    ]
    try:
        profiles: list[str] = []
        for index, http in enumerate(clients):
            response = await http.post(
                "/v1/profiles/get-or-create",
                json={"channel": "web", "channel_user_id": f"bench-{index}"},
            )
            response.raise_for_status()
            profiles.append(response.json()["id"])
            for n in range(5):
                await http.post(
                    f"/v1/profiles/{profiles[-1]}/fields", json={"name": f"note_{n}", "value": n}
                )

        async def read(index: int) -> None:
            response = await clients[index].get(f"/v1/profiles/{profiles[index]}")
            response.raise_for_status()

        async def write(index: int, sequence: int) -> None:
            body = _field(sequence).model_dump(mode="json", include={"name", "value"})
            response = await clients[index].post(
                f"/v1/profiles/{profiles[index]}/fields", json=body
            )
            response.raise_for_status()

        await drive(run, args.clients, args.requests, args.seconds, args.read_share, read, write)
    finally:
        for http in clients:
            await http.aclose()
    return run


async def in_process(settings: ccvault.VaultSettings, args: argparse.Namespace) -> Run:
    run = Run("in-process (open_store)")
    tenant = uuid4()
    async with ccvault.open_store(settings) as store:
        profiles: list[UUID] = []
        for index in range(args.clients):
            profile = await store.get_or_create(tenant, Channel.WEB, f"bench-{index}")
            profiles.append(profile.id)
            for n in range(5):
                await store.update_field(
                    tenant, profile.id, ProfileField(name=f"note_{n}", value=n)
                )

        async def read(index: int) -> None:
            if await store.get_by_id(tenant, profiles[index]) is None:
                raise LookupError

        async def write(index: int, sequence: int) -> None:
            await store.update_field(tenant, profiles[index], _field(sequence))

        await drive(run, args.clients, args.requests, args.seconds, args.read_share, read, write)
    return run


def report(runs: list[Run], args: argparse.Namespace) -> None:
    print(
        f"{args.clients} concurrent clients, {args.read_share:.0%} reads / "
        f"{1 - args.read_share:.0%} updates, at most {args.requests} calls or {args.seconds:g}s, "
        f"provider {args.provider}, key scopes read,write{',pii:read' if args.pii_read else ''}, "
        "loopback"
    )
    print(f"{'mode':<26}{'calls':>8}{'errors':>8}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for run in runs:
        print(
            f"{run.mode:<26}{run.calls:>8}{run.errors:>8}{run.throughput:>10.0f}"
            f"{run.quantile(0.5):>9.2f}{run.quantile(0.99):>9.2f}"
        )
    served, local = runs
    if local.throughput:
        print(
            f"remote/in-process: throughput {served.throughput / local.throughput:.2f}x, "
            f"p50 {served.quantile(0.5) / local.quantile(0.5):.1f}x, "
            f"p99 {served.quantile(0.99) / local.quantile(0.99):.1f}x"
        )
    if served.latencies:
        print(f"HTTP mean latency {statistics.fmean(served.latencies) * 1000:.2f} ms")
    for run in runs:
        if run.error_kinds:
            print(f"errors of {run.mode}: {run.error_kinds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--read-share", type=float, default=0.8)
    parser.add_argument("--provider", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--pii-read",
        action="store_true",
        help="Give the key pii:read (no masking, so no PII-registry read per response).",
    )
    args = parser.parse_args()
    if not (1 <= args.clients <= 1024 and 0.0 <= args.read_share <= 1.0 and args.requests > 0):
        parser.error("--clients 1..1024, --read-share 0..1, --requests > 0")
    os.environ.setdefault("PROFILE_PII_ENCRYPTION_KEY", generate_key_entry("bench"))

    with tempfile.TemporaryDirectory(prefix="ccvault-server-bench-") as tmp:
        directory = Path(tmp)
        database: str | None = None
        if args.provider == "postgres":
            from ccvault_postgres.testing import admin_dsn, create_database, dsn_with_database

            admin = admin_dsn()
            database = asyncio.run(create_database(admin))
            dsn = dsn_with_database(admin, database)
            config = directory / "serve.toml"
            config.write_text(
                "[profile]\n"
                'store_provider = "postgres"\ncache_enabled = false\nauto_encrypt_pii = true\n'
                f'[providers.postgres]\ndsn = "{dsn}"\n',
                encoding="utf-8",
            )
        else:
            config = embedded_config(directory)
        try:
            with running_server(config, directory) as server:
                tenant = uuid4()
                token = server.mint(
                    tenant, "read,write,pii:read" if args.pii_read else "read,write"
                )
                served = asyncio.run(remote(server.base_url, token, args))
            # the same kind of database, fresh, for the in-process run
            if args.provider == "sqlite":
                local_settings = ccvault.load_settings(
                    config, providers={"sqlite": {"path": str(directory / "local.db")}}
                )
            else:
                local_settings = ccvault.load_settings(config)
            asyncio.run(ccvault.migrate_schema(local_settings))  # the explicit step
            local = asyncio.run(in_process(local_settings, args))
        finally:
            if database is not None:
                from ccvault_postgres.testing import admin_dsn, drop_database

                asyncio.run(drop_database(admin_dsn(), database))
    report([served, local], args)
    if served.errors or local.errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
