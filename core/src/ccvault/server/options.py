"""Options of ``ccvault serve`` that are not vault settings: where to listen, the key file,
limits. Each comes from a command-line option, else the environment, else the default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ccvault import errors

__all__ = ["ServerOptions", "default_api_keys_path"]


def default_api_keys_path() -> str:
    """``$CCVAULT_API_KEYS_PATH``, else ``api-keys.db`` in the data directory
    (``$CCVAULT_DATA_DIR``, default ``~/.local/share/ccvault``) beside the embedded vault."""
    from ccvault.settings import data_dir

    return os.environ.get("CCVAULT_API_KEYS_PATH") or str(data_dir() / "api-keys.db")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise errors.ConfigurationError(f"{name} must be an integer") from None


@dataclass(frozen=True)
class ServerOptions:
    """``host``/``port``: where to listen; ``api_keys_path``: the hashed key file
    (``$CCVAULT_API_KEYS_PATH``, else ``api-keys.db`` in the data directory);
    ``max_body_bytes``: larger request bodies get 413 (``$CCVAULT_MAX_BODY_BYTES``);
    ``graceful_shutdown_seconds``: how long SIGTERM waits for in-flight requests."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_keys_path: str = field(default_factory=default_api_keys_path)
    max_body_bytes: int = field(
        default_factory=lambda: _env_int("CCVAULT_MAX_BODY_BYTES", 1_048_576)
    )
    graceful_shutdown_seconds: float = 30.0
    #: TESTING ONLY: a request may set the store's clock with ``X-Ccvault-Clock: <ISO time>``
    #: (how the contract suite's frozen clock reaches a remote store). Never in production:
    #: any key holder could then backdate what it writes.
    trust_client_clock: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise errors.ConfigurationError(f"port must be in 0..65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise errors.ConfigurationError("max_body_bytes must be at least 1024")
