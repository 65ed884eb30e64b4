"""Helpers for tests and benchmarks that start private servers (Redis, PostgreSQL,
``ccvault serve``) on loopback ports. Needs no extra.

A port from ``bind(0)`` comes from the kernel's ephemeral range, where every outgoing
connection also takes its local port: one could take it between the moment it was picked
and the moment a server binds it (or binds it again on a restart). So ports are picked
below that range. Where the range starts too low to leave room (below about 11,000, or
21,000 with a paired port), they are picked from 20,000 up instead, and that protection is
lost; without ``/proc`` (not Linux) the range is taken to start at 32,768. Nothing is reserved: a
server that cannot bind its port must fail to start ("Address already in use"), and its
starter may pick another.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection
from pathlib import Path

__all__ = ["free_loopback_port"]

_LOWEST_PORT = 10000
_DEFAULT_EPHEMERAL_LOW = 32768


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_loopback_port(*, paired_offset: int = 0, avoid: Collection[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now and that is not in
    ``avoid``, picked at random below the kernel's ephemeral range.

    ``paired_offset``: the port ``port + paired_offset`` must be free, outside ``avoid`` and
    below the range too (a Redis Cluster node's bus port is its port + 10000). When the
    range starts too low to leave 1,000 ports, they are picked from 20,000 up instead
    (inside the range: the race this avoids is possible again there).
    RuntimeError if none is found in 200 tries.
    """
    low, high = _LOWEST_PORT, _ephemeral_low() - paired_offset
    if high - low < 1000:
        low, high = 20000, 65536 - paired_offset - 10000
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(low, high)
        wanted = {port, port + paired_offset}
        if wanted.isdisjoint(avoid) and all(map(_bindable, wanted)):
            return port
    raise RuntimeError("no free loopback port")
