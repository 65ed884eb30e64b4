"""How the vault's processes log: plain text or one JSON object per line, on stderr.

The records carry what the vault's own messages say (ids, counts, key ids, error types) and
never a field value or a channel user id: the vault's log messages are written that way, and
the JSON form adds only the time, the level, the logger name and, for an exception, its type.

``configure(format="json")`` is what ``--log-format json`` and ``[logging] format = "json"``
select; :class:`OncePer` lets a hot path log a condition once per key and process.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Literal

__all__ = ["JsonFormatter", "OncePer", "configure"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# marks the handler this module installed, so a second configure() replaces it
_OWN = "_ccvault_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, and ``exc_type`` when the record holds an exception. The traceback is not
    included: its frames' text could quote data; run in text format to see it."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            document["exc_type"] = record.exc_info[0].__name__
        return json.dumps(document, ensure_ascii=False, default=str)


def configure(format: Literal["text", "json"] = "text", level: int | str = logging.WARNING) -> None:
    """Log records of every logger at ``level`` and above on stderr, as text or JSON.

    Idempotent: a second call replaces the handler the first one installed (and nothing
    else: an application's own handlers stay)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OWN, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _OWN, True)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


class OncePer:
    """Remembers keys already seen, up to ``limit`` of them (then everything counts as seen,
    so a client cannot grow it): ``first(key)`` is True once per key and process."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._seen: set[Hashable] = set()
        self._lock = threading.Lock()

    def first(self, key: Hashable) -> bool:
        with self._lock:
            if key in self._seen or len(self._seen) >= self.limit:
                return False
            self._seen.add(key)
            return True
