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
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ccvault.models import ItemStatus, ProfileField
from ccvault.testing import free_loopback_port

__all__ = [
    "PGBOUNCER_BIN",
    "PG_BIN",
    "PgBouncer",
    "PrivateServer",
    "admin_dsn",
    "chain_problems",
    "create_database",
    "drop_database",
    "dsn_with_database",
    "pgbouncer",
    "private_server",
    "temporary_database",
]

#: Where the PostgreSQL server binaries live (override with CCVAULT_PG_BIN).
PG_BIN = Path(os.environ.get("CCVAULT_PG_BIN", "/usr/lib/postgresql/15/bin"))

#: The PgBouncer binary (override with CCVAULT_PGBOUNCER_BIN); absent: its tests skip.
PGBOUNCER_BIN = os.environ.get("CCVAULT_PGBOUNCER_BIN") or shutil.which("pgbouncer") or ""


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


class PrivateServer:
    """A PostgreSQL cluster of our own: ``initdb`` in a temp dir, loopback, free port.

    The server refuses to run as root, so when we are root the cluster is owned by and run
    as the ``postgres`` OS user (``runuser``).
    """

    def __init__(self) -> None:
        self.port = free_loopback_port()
        self.root = Path(tempfile.mkdtemp(prefix="ccvault-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._owner = "postgres" if os.geteuid() == 0 else None
        self._started = False
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
        for attempt in range(1, 6):
            try:
                self._run(*self._pg_ctl("start"))
            except RuntimeError as exc:
                # the port taken between its choice and the first start: another port (a
                # later start keeps it: clients hold the DSN)
                if self._started or "Address already in use" not in str(exc) or attempt == 5:
                    raise
                self.log.unlink(missing_ok=True)
                self.port = free_loopback_port()
            else:
                self._started = True
                return

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


class PgBouncer:
    """A private PgBouncer in front of ``upstream`` (host:port): a temp dir, a free loopback
    port, ``pool_mode`` as given, no authentication (``auth_type = any``, every client
    connects as ``user``). Run as the ``postgres`` OS user when we are root (PgBouncer
    refuses root). Stopped and deleted by :meth:`destroy`."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        user: str = "postgres",
        pool_mode: str = "transaction",
        pool_size: int = 4,
    ) -> None:
        if not PGBOUNCER_BIN:
            raise RuntimeError("pgbouncer is not installed")
        self.port = free_loopback_port()
        self.root = Path(tempfile.mkdtemp(prefix="ccvault-pgbouncer-"))
        self._owner = "postgres" if os.geteuid() == 0 else None
        self.config = self.root / "pgbouncer.ini"
        self.log = self.root / "pgbouncer.log"
        self.stderr = self.root / "pgbouncer.stderr"
        self._started = False
        self._settings = (
            "[databases]\n"
            f"* = host={upstream_host} port={upstream_port} user={user}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            "listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            f"pool_mode = {pool_mode}\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 200\n"
            f"logfile = {self.log}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
            # asyncpg sends no other startup parameter in transaction-pooler mode
            "ignore_startup_parameters = extra_float_digits\n"
        )
        self._write_config()
        if self._owner is not None:
            entry = pwd.getpwnam(self._owner)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        self.config.write_text(self._settings.replace("{port}", str(self.port)))
        if self._owner is not None:
            entry = pwd.getpwnam(self._owner)
            os.chown(self.config, entry.pw_uid, entry.pw_gid)

    def dsn(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start and wait (bounded) until our process listens on the port: its log says so
        (something else accepting connections there does not count). A port taken
        between its choice and the first start: another port, up to 5 tries (a later start
        keeps it: clients hold the DSN)."""
        command = [PGBOUNCER_BIN, str(self.config)]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner, "--", *command]
        attempts = 1 if self._started else 5
        for attempt in range(1, attempts + 1):
            # only what this start logs counts (a restart's log holds the last start's lines)
            offset = self.log.stat().st_size if self.log.exists() else 0
            with self.stderr.open("wb") as stderr:  # a file: a pipe nobody reads could fill
                self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
            listening = f"listening on 127.0.0.1:{self.port}"
            for _ in range(200):  # up to ~10 s
                log = self._log_since(offset)
                if self.process.poll() is not None:
                    output = f"{self.stderr.read_text(errors='replace')}{log}"
                    if "Address already in use" in output and attempt < attempts:
                        self.port = free_loopback_port(avoid={self.port})
                        self._write_config()
                        break
                    raise RuntimeError(f"pgbouncer exited: {output}")
                if listening in log:
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                        sock.settimeout(0.05)
                        if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                            self._started = True
                            return
                time.sleep(0.05)  # a bounded wait for a child process to listen, not a test
            else:
                raise RuntimeError("pgbouncer did not start listening within 10 s")
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _log_since(self, offset: int) -> str:
        try:
            with self.log.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def pgbouncer(upstream_dsn: str, **options: Any) -> Iterator[PgBouncer]:
    """A started private :class:`PgBouncer` in front of the server of ``upstream_dsn``."""
    parts = urlsplit(upstream_dsn)
    bouncer = PgBouncer(parts.hostname or "127.0.0.1", parts.port or 5432, **options)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.destroy()
