"""``ccvault serve``: the vault over HTTP/JSON and MCP, with per-tenant API keys.

Needs the ``server`` extra (``pip install 'ccvault[server]'``: FastAPI, uvicorn, the MCP SDK).
Importing this package is cheap; the web stack is imported on first use of ``create_app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ccvault.server.app import API_VERSION, create_app

__all__ = ["API_VERSION", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ccvault.extras import requires_extra

        with requires_extra("server", "The HTTP/MCP server (ccvault.server)"):
            from ccvault.server import app

        return getattr(app, name)
    raise AttributeError(name)
