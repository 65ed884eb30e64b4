"""The clock the served store reads, per request.

Every layer of the served stack reads :data:`request_clock` first, its own clock otherwise.
Two uses: ``as_stored`` reads (the versions with their stored statuses, expiry not applied
at read time: what a provider hook returns, so a remote client's public methods apply the
rules exactly once, as an embedded store does), and, on a server started with
``--trust-client-clock`` (testing only), a clock sent by the client (``X-Ccvault-Clock``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

from ccvault.store import ProfileStore

__all__ = ["STORED_VIEW", "install_request_clock", "request_clock", "stored_view"]

request_clock: ContextVar[datetime | None] = ContextVar("ccvault_request_clock", default=None)

#: read "as stored": no version has expired yet at this moment
STORED_VIEW = datetime(1970, 1, 1, tzinfo=UTC)


def install_request_clock(store: ProfileStore) -> None:
    """Every layer of the stack reads :data:`request_clock` when set, else its own clock."""
    layer: object = store
    seen: list[object] = []
    while isinstance(layer, ProfileStore) and layer not in seen:
        seen.append(layer)
        own = layer.now

        def now(own: Callable[[], datetime] = own) -> datetime:
            sent = request_clock.get()
            return sent if sent is not None else own()

        layer.now = now  # type: ignore[method-assign]
        layer = getattr(layer, "inner", None)


@contextlib.contextmanager
def stored_view(enabled: bool = True) -> Iterator[None]:
    """Within the block, reads of the store present versions as stored (for reads only)."""
    if not enabled:
        yield
        return
    token = request_clock.set(STORED_VIEW)
    try:
        yield
    finally:
        request_clock.reset(token)
