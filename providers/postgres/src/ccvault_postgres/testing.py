"""Helpers for tests and benchmarks: throw-away databases and private PostgreSQL servers.

Nothing here touches data it did not create: databases get unique ``ccvault_t_...`` names
and are dropped afterwards; a :class:`PrivateServer` is a fresh ``initdb`` cluster in a
temporary directory, on a free loopback port, stopped and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ccvault.models import ItemStatus, ProfileField

__all__ = [
    "PG_BIN",
    "PrivateServer",
    "admin_dsn",
    "chain_problems",
    "create_database",
    "drop_database",
    "dsn_with_database",
    "private_server",
    "temporary_database",
]

#: Where the PostgreSQL server binaries live (override with CCVAULT_PG_BIN).
PG_BIN = Path(os.environ.get("CCVAULT_PG_BIN", "/usr/lib/postgresql/15/bin"))


def admin_dsn() -> str:
    """The shared server tests may create databases on (``CCVAULT_TEST_POSTGRES_DSN``)."""
    return os.environ.get(
        "CCVAULT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
    )


def dsn_with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def create_database(dsn: str, prefix: str = "ccvault_t") -> str:
    """Create a uniquely named, empty database on the server of ``dsn``; return its name.

    Raises (never skips) when the server cannot be reached.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        # a generated identifier, not user input; CREATE DATABASE takes no parameters
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(dsn: str, name: str) -> None:
    """Drop a database made by :func:`create_database`, disconnecting its sessions."""
    if not name.startswith("ccvault_"):
        raise ValueError(f"refusing to drop {name!r}: not a ccvault test database")
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def temporary_database(dsn: str | None = None) -> AsyncIterator[str]:
    """A fresh database for the block; yields its DSN."""
    server = dsn or admin_dsn()
    name = await create_database(server)
    try:
        yield dsn_with_database(server, name)
    finally:
        await drop_database(server, name)


def chain_problems(versions: Sequence[ProfileField]) -> list[str]:
    """What is wrong with the versions of ONE field name (empty: nothing).

    The invariants: at most one ACTIVE version; every SUPERSEDED version points, through
    ``superseded_by_id``, at another stored version, no version is pointed at twice, and the
    links form one unbroken chain from the oldest version to the newest.
    """
    problems: list[str] = []
    by_id = {v.id: v for v in versions}
    active = [v for v in versions if v.status is ItemStatus.ACTIVE]
    if len(active) > 1:
        problems.append(f"{len(active)} ACTIVE versions")
    superseded = [v for v in versions if v.status is ItemStatus.SUPERSEDED]
    targets: dict[uuid.UUID, uuid.UUID] = {}
    for version in superseded:
        target = version.superseded_by_id
        if target is None or target not in by_id:
            problems.append(f"{version.id} superseded by a missing version {target}")
            continue
        if target in targets:
            problems.append(f"{target} supersedes both {targets[target]} and {version.id}")
        targets[target] = version.id
    roots = [v for v in superseded if v.id not in targets]
    if superseded and len(roots) != 1:
        problems.append(f"the supersede links form {len(roots)} chains, not one")
    elif roots:
        seen = {roots[0].id}
        link = roots[0].superseded_by_id
        while link is not None and link not in seen:
            seen.add(link)
            link = by_id[link].superseded_by_id if link in by_id else None
        if len(seen) != len(superseded) + 1:
            problems.append(f"the chain covers {len(seen)} of {len(superseded) + 1} versions")
    return problems


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateServer:
    """A PostgreSQL cluster of our own: ``initdb`` in a temp dir, loopback, free port.

    The server refuses to run as root, so when we are root the cluster is owned by and run
    as the ``postgres`` OS user (``runuser``).
    """

    def __init__(self) -> None:
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ccvault-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._owner = "postgres" if os.geteuid() == 0 else None
        if self._owner is not None:
            entry = pwd.getpwnam(self._owner)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str) -> list[str]:
        if self._owner is None:
            return list(args)
        return ["runuser", "-u", self._owner, "--", *args]

    def _run(self, *args: str) -> None:
        result = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stdout}{result.stderr}{log}"
            )

    def _pg_ctl(self, action: str, *extra: str) -> list[str]:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=100"
        )
        return [
            str(PG_BIN / "pg_ctl"),
            action,
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            *extra,
        ]

    def start(self) -> None:
        """initdb (first time) and start; returns when the server accepts connections."""
        if not self.data.exists():
            self._run(
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            )
        self._run(*self._pg_ctl("start"))

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w")

    async def restart(self, mode: str = "fast") -> None:
        """Really restart the server (sessions are terminated), without blocking the loop."""
        process = await asyncio.create_subprocess_exec(
            *self._cmd(*self._pg_ctl("restart", "-m", mode)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {output.decode(errors='replace')}")

    def destroy(self) -> None:
        """Stop the server (if running) and delete its directory."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_server() -> Iterator[PrivateServer]:
    """A started :class:`PrivateServer` for the block; destroyed afterwards."""
    server = PrivateServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()
