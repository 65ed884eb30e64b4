"""Test and benchmark helpers: a real ``ccvault serve`` process on a free loopback port.

Used by the server tests, the remote client's contract run and ``benchmarks/server_bench.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from ccvault.extras import requires_extra
from ccvault.server.auth import ApiKeyStore

with requires_extra("testing", "The test server helpers (ccvault.server.testing)"):
    import httpx

__all__ = ["ServerProcess", "embedded_config", "free_port", "running_server"]

_START_TIMEOUT_SECONDS = 60.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def _wait_healthy(server: ServerProcess) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{server.base_url}/healthz").status_code == 200:
                    return
            time.sleep(0.05)  # polling interval of a bounded readiness loop
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


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
    port = free_port()
    keys_path = directory / "api-keys.db"
    log_path = directory / f"server-{port}.log"
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
        str(port),
        "--api-keys",
        str(keys_path),
        *args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", keys_path, log_path)
    try:
        _wait_healthy(server)
        yield server
    finally:
        server.terminate()
        if server._keys is not None:
            server._keys.close()
