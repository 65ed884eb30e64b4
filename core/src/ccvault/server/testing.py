"""Test and benchmark helpers: a real ``ccvault serve`` process on a free loopback port
(the server binds port 0 and reports the port it got, so no other process can hold it).

Used by the server tests, the remote client's contract run and ``benchmarks/server_bench.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from ccvault.extras import requires_extra
from ccvault.server.auth import ApiKeyStore
from ccvault.testing import free_loopback_port

with requires_extra("testing", "The test server helpers (ccvault.server.testing)"):
    import httpx

__all__ = ["ServerProcess", "embedded_config", "free_port", "running_server", "wait_until_ok"]

_START_TIMEOUT_SECONDS = 60.0
# uvicorn's start line, with the port it bound (the real one when asked for port 0)
_LISTENING = re.compile(rb"Uvicorn running on (https?://\S+:\d+) \(")  # a whole line


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, below the ephemeral range
    (:func:`ccvault.testing.free_loopback_port`)."""
    return free_loopback_port()


def embedded_config(directory: Path, *, provider: str = "sqlite", extra: str = "") -> Path:
    """A settings file for a server with no other servers: SQLite under ``directory``."""
    path = directory / "serve.toml"
    path.write_text(
        "[profile]\n"
        f'store_provider = "{provider}"\n'
        "cache_enabled = false\n"
        "auto_encrypt_pii = true\n"
        "[providers.sqlite]\n"
        f'path = "{(directory / "vault.db").as_posix()}"\n' + extra,
        encoding="utf-8",
    )
    return path


@dataclass
class ServerProcess:
    """A running server: its URL, its key file and the process."""

    process: subprocess.Popen[bytes]
    base_url: str
    keys_path: Path
    log_path: Path
    _keys: ApiKeyStore | None = field(default=None, repr=False)

    @property
    def keys(self) -> ApiKeyStore:
        """The server's key file (the admin helper: the server reads it on every request)."""
        if self._keys is None:
            self._keys = ApiKeyStore(self.keys_path)
        return self._keys

    def mint(self, tenant_id: UUID, scopes: str = "read,write,pii:read,admin") -> str:
        """A new key of ``tenant_id`` with ``scopes``; the token."""
        return self.keys.create(tenant_id, scopes, name="test")[1]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def _wait_listening(server: ServerProcess) -> str:
    """The base URL the server's start line in its log reports (polled, bounded)."""
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        match = _LISTENING.search(server.log_path.read_bytes())
        if match is not None:
            return match.group(1).decode()
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        time.sleep(0.05)  # polling interval of a bounded readiness loop
    raise RuntimeError(f"server did not start listening:\n{server.log()}")


def wait_until_ok(
    server: ServerProcess, path: str = "/healthz", *, timeout: float = _START_TIMEOUT_SECONDS
) -> httpx.Response:
    """GET ``path`` of ``server`` until it answers 200 (polled, for at most ``timeout``
    seconds); that response. RuntimeError with the server's log if the process exits or
    the time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=30.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log()}")
            try:
                # no request outlives the deadline by more than a second
                wait = max(1.0, min(30.0, deadline - time.monotonic()))
                response = client.get(f"{server.base_url}{path}", timeout=wait)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response
                last = f"{response.status_code} {response.text}"
            time.sleep(0.05)  # polling interval of a bounded readiness loop
    raise RuntimeError(f"{path} did not answer 200 (last: {last}):\n{server.log()}")


@contextlib.contextmanager
def running_server(
    config: Path,
    directory: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    migrate: bool = True,
) -> Iterator[ServerProcess]:
    """``ccvault --config CONFIG serve`` on a free port, healthy when the block starts,
    SIGTERMed when it ends. ``migrate``: first ``ccvault --config CONFIG migrate``, the
    explicit step a deployment runs before starting (serving never changes the schema)."""
    if migrate:
        migrated = subprocess.run(
            [sys.executable, "-m", "ccvault", "--config", str(config), "migrate"],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=120,
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"ccvault migrate failed: {migrated.stderr.strip()}")
    keys_path = directory / "api-keys.db"
    handle, name = tempfile.mkstemp(prefix="server-", suffix=".log", dir=directory)
    command = [
        sys.executable,
        "-m",
        "ccvault",
        "--config",
        str(config),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--api-keys",
        str(keys_path),
        *args,
    ]
    with os.fdopen(handle, "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    server = ServerProcess(process, "", keys_path, Path(name))
    try:
        server.base_url = _wait_listening(server)
        wait_until_ok(server, "/healthz")
        yield server
    finally:
        server.terminate()
        if server._keys is not None:
            server._keys.close()
