"""The committed OpenAPI document (``openapi.json`` next to this module) and how to refresh it.

``python -m ccvault.server.openapi`` rewrites the file from the code; a test fails when the
committed document and ``app.openapi()`` differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["DOCUMENT_PATH", "current_document", "render"]

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")


def current_document() -> dict[str, Any]:
    """The OpenAPI document of the application as the code defines it now."""
    from ccvault.server.app import create_app
    from ccvault.server.auth import ApiKeyStore
    from ccvault.settings import load_settings

    settings = load_settings(None, store_provider="inmemory", cache_enabled=False)
    document: dict[str, Any] = create_app(settings, keys=ApiKeyStore(":memory:")).openapi()
    return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    DOCUMENT_PATH.write_text(render(current_document()), encoding="utf-8")
    print(f"wrote {DOCUMENT_PATH}", file=sys.stderr)


if __name__ == "__main__":
    main()
