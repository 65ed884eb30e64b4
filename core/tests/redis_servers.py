"""Private Redis servers for the cache tests: started from the installed binaries on free
loopback ports in temporary directories, owned and stopped by the test that started them.

The shared server on 6379 is never touched here. Waiting is always polling for a condition
with a bounded deadline.

A port picked as free is not reserved: another process (say the other pytest-xdist worker's
private server) may bind it before our server does. So a server counts as started only when
the process answering on its port is our own child (``INFO server`` ``process_id``), and a
first start whose child could not bind its port picks another port and tries again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from ccvault.store import ForwardingProfileStore, ProfileStore
from ccvault.testing import free_loopback_port
from ccvault_inmemory import InMemoryProfileStore

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"

__all__ = ["CountingStore", "RedisClusterServers", "RedisServer", "free_port", "wait_for"]


#: a cluster node's bus port is its port + this
CLUSTER_BUS_OFFSET = 10000


def free_port(*, cluster: bool = False, avoid: Collection[int] = ()) -> int:
    """A loopback TCP port nobody listens on right now, not in ``avoid``, below the
    kernel's ephemeral range (:func:`ccvault.testing.free_loopback_port`); for a cluster
    node its bus port (port + 10000) too. Nothing is reserved: :meth:`RedisServer.start`
    checks that it got the port."""
    return free_loopback_port(paired_offset=CLUSTER_BUS_OFFSET if cluster else 0, avoid=avoid)


def wait_for(condition: Callable[[], bool], what: str, deadline: float = 15.0) -> None:
    """Poll ``condition`` until it holds; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


class RedisServer:
    """One redis-server process on 127.0.0.1:``port`` with its files in ``directory``.

    Started with ``--save "" --appendonly no``: nothing persists unless the test asks for
    it with :meth:`shutdown_save` (which writes dump.rdb for the next :meth:`start`).

    With no ``port`` given the server picks one (:func:`free_port`), and picks another if
    its first start finds it taken. A restart keeps the port: clients hold the URL.
    """

    #: how many ports a first start tries when the server cannot bind the one it has
    START_ATTEMPTS = 5
    #: how long a start waits for the server to answer (a bound, not a timing assertion)
    START_DEADLINE_SECONDS = 15.0

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        #: the port may change on a failed first start (a port given by the caller does not)
        self.movable = port is None
        self.started_once = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )

    def _answering_pid(self) -> int:
        """The process id of the server answering on our port."""
        with self.client() as client:
            return int(client.info("server")["process_id"])

    def _new_port(self) -> int:
        """A port for the next attempt of a first start."""
        return free_port(avoid={self.port})

    def _before_retry(self) -> None:
        """Clean up what a failed first start left in ``directory``."""

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _launch(self) -> bool:
        """Start the process and poll until it answers on ``port`` as itself (True) or exits
        (False, ``process`` reset). A server of another process answering there does not
        count: our child then fails to bind and exits."""
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--logfile",
                str(self.log_path),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + self.START_DEADLINE_SECONDS
        while time.monotonic() < end:
            if self.process.poll() is not None:
                self.process = None
                return False
            try:
                if self._answering_pid() == self.process.pid:
                    return True
            except (redis.RedisError, OSError, KeyError, ValueError):
                pass
            time.sleep(0.02)  # polling interval of a bounded readiness loop
        self.stop()
        raise TimeoutError(f"timed out waiting for redis-server on port {self.port}")

    def start(self) -> None:
        """Start (or restart) the server; wait until it answers on ``port`` as this process.

        If the process exits instead (its port taken by another process meanwhile: address
        already in use), a first start of a server that chose its own port tries a new port,
        up to :attr:`START_ATTEMPTS` times; otherwise it fails with the server's log.
        """
        assert self.process is None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        attempts = self.START_ATTEMPTS if self.movable and not self.started_once else 1
        for attempt in range(1, attempts + 1):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            if self._launch():
                self.started_once = True
                return
            log = self._log_since(offset)
            if "Address already in use" not in log or attempt == attempts:
                raise RuntimeError(
                    f"redis-server exited instead of serving on port {self.port} "
                    f"(attempt {attempt} of {attempts}); its log:\n{log}"
                )
            self._before_retry()
            self.port = self._new_port()

    def stop(self) -> None:
        """Stop the server (SIGTERM, without saving) and wait for it to exit."""
        if self.process is None:
            return
        if self.paused:
            self.resume()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def shutdown_save(self) -> None:
        """Stop the server after it wrote its data to dump.rdb (restored by :meth:`start`)."""
        assert self.process is not None
        # our child still runs, so the server on the port is ours (checked at start)
        assert self.process.poll() is None, "redis-server exited"
        subprocess.run(
            [REDIS_CLI, "-p", str(self.port), "shutdown", "save"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,  # the server closes the connection as it exits
        )
        self.process.wait(timeout=10)
        self.process = None

    paused = False

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open, nothing is answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False


class _ClusterNode(RedisServer):
    """A cluster node: its port and bus port stay clear of its siblings' ports."""

    def __init__(self, directory: Path, port: int, siblings: list[RedisServer]) -> None:
        super().__init__(
            directory,
            port,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        )
        self.movable = True
        self.siblings = siblings

    def _new_port(self) -> int:
        taken = {self.port, self.port + CLUSTER_BUS_OFFSET}
        for node in self.siblings:
            if node is not self:
                taken |= {node.port, node.port + CLUSTER_BUS_OFFSET}
        return free_port(cluster=True, avoid=taken)

    def _before_retry(self) -> None:
        (self.directory / "nodes.conf").unlink(missing_ok=True)


class RedisClusterServers:
    """A three-master Redis Cluster on loopback ports, created with ``redis-cli --cluster``."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        # distinct ports and bus ports, all below the ephemeral range; a node whose port is
        # taken by the time it starts moves to another (see RedisServer.start)
        self.nodes: list[RedisServer] = []
        taken: set[int] = set()
        for i in range(masters):
            port = free_port(cluster=True, avoid=taken)
            taken |= {port, port + CLUSTER_BUS_OFFSET}
            self.nodes.append(_ClusterNode(directory / f"node{i}", port, self.nodes))

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def _all_ok(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
        return True

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *[f"127.0.0.1:{node.port}" for node in self.nodes],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        wait_for(self._all_ok, "cluster_state:ok on every node", deadline=30)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# ---------------------------------------------------------------------------------------
# a backend that counts (and can delay) the reads the cache sends it
# ---------------------------------------------------------------------------------------


class CountingStore(ForwardingProfileStore):
    """Forwards to ``inner``; counts every read hook the cache reaches in ``reads``.

    ``after_read`` (if set) is awaited after the inner read returned and before the result
    goes back to the cache: tests use it to hold a reader between "read the database" and
    "fill the cache", which is exactly where the seed's read-through race lives.
    """

    def __init__(self, inner: ProfileStore) -> None:
        super().__init__(inner)
        self.reads: Counter[str] = Counter()
        self.after_read: Any = None

    async def _count(self, name: str, call: Awaitable[Any]) -> Any:
        self.reads[name] += 1
        result = await call
        if self.after_read is not None:
            await self.after_read(name)
        return result

    async def _get_by_id(self, *args: Any) -> Any:
        return await self._count("get_by_id", super()._get_by_id(*args))

    async def _get_by_customer_id(self, *args: Any) -> Any:
        return await self._count("get_by_customer_id", super()._get_by_customer_id(*args))

    async def _get_by_channel_identity(self, *args: Any) -> Any:
        return await self._count("get_by_channel_identity", super()._get_by_channel_identity(*args))

    async def _get_field_definitions(self, *args: Any) -> Any:
        return await self._count("get_field_definitions", super()._get_field_definitions(*args))

    async def _get_scenario_requirements(self, *args: Any) -> Any:
        return await self._count(
            "get_scenario_requirements", super()._get_scenario_requirements(*args)
        )

    async def _get_derivation_chain(self, *args: Any) -> Any:
        return await self._count("get_derivation_chain", super()._get_derivation_chain(*args))


#: the three profile lookups the near tier serves
LOOKUPS = ("get_by_id", "get_by_customer_id", "get_by_channel_identity")

Read = Callable[[Any], Awaitable[Any]]


def reader(lookup: str, profile: Any) -> Read:
    """A read of ``profile`` through ``lookup`` (one of :data:`LOOKUPS`), for any store."""
    tenant = profile.tenant_id
    identity = profile.channel_identities[0]

    async def read(store: Any) -> Any:
        if lookup == "get_by_id":
            return await store.get_by_id(tenant, profile.id)
        if lookup == "get_by_customer_id":
            return await store.get_by_customer_id(tenant, profile.customer_id)
        return await store.get_by_channel_identity(
            tenant, identity.channel, identity.channel_user_id
        )

    return read


# ---------------------------------------------------------------------------------------
# fixtures for tests on the shared Redis (a module takes them as ``prefix = H.prefix``)
# ---------------------------------------------------------------------------------------

#: the shared Redis server the tests use under prefixes of their own
SHARED_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own on the shared Redis; its keys are deleted after."""
    value = f"ccvault-test:{uuid.uuid4().hex}:"
    yield value
    client = redis.asyncio.Redis.from_url(SHARED_URL)
    keys = [key async for key in client.scan_iter(match=f"{value}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def backend() -> CountingStore:
    """An in-memory backend counting the reads that reach it."""
    return CountingStore(InMemoryProfileStore())
