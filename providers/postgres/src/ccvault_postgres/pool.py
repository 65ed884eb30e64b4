"""A small pool of asyncpg connections, made for the store's hot path.

Why not ``asyncpg.Pool``: its ``release()`` always runs in a shielded task (so that a
cancellation cannot interrupt the reset query it may send), which costs two more trips
through the event loop per call. The store's statements leave no session state, so it
needs no reset query and releases synchronously here; measured on a whole-profile read of
50 fields, that is ~60 µs of ~450 µs, about a seventh of the read.

Contract, in short:

* :meth:`acquire` hands out an idle connection (the most recently used first), opens a new
  one while fewer than ``max_size`` exist, or waits for a release; it gives up with
  :class:`TimeoutError` after ``max_wait`` seconds.
* :meth:`release` never waits. A connection that is closed, or left inside a transaction,
  is dropped (terminated) and its place freed, so a restarted server is reconnected to on
  demand; waiters are woken to open a fresh one.
* Idle connections beyond ``min_size`` are closed after ``max_inactive`` seconds (0: never).
* :meth:`close` waits for the connections in use to come back, then closes them all;
  :meth:`terminate` closes everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

import asyncpg

__all__ = ["ConnectionPool"]


class ConnectionPool:
    """At most ``max_size`` connections made by ``connect``; see the module docstring."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        min_size: int,
        max_size: int,
        max_inactive: float = 0.0,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError("need 0 <= min_size <= max_size and max_size >= 1")
        self._connect = connect
        self._min_size = min_size
        self._max_size = max_size
        self._max_inactive = max_inactive
        self._idle: list[asyncpg.Connection] = []  # LIFO: the warmest connection first
        self._in_use: set[asyncpg.Connection] = set()
        self._size = 0  # idle + in use + being opened
        # a waiter gets a connection, or None: "a place is free, open one yourself"
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._timers: dict[asyncpg.Connection, asyncio.TimerHandle] = {}
        self._all_back: asyncio.Event | None = None  # set by close() while it waits
        self._closed = False

    # ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open ``min_size`` connections; on failure close those opened and raise."""
        self._size += self._min_size
        results = await asyncio.gather(
            *(self._connect() for _ in range(self._min_size)), return_exceptions=True
        )
        opened = [r for r in results if isinstance(r, asyncpg.Connection)]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            for conn in opened:
                conn.terminate()
            self._size -= self._min_size
            raise failure
        self._idle.extend(opened)

    def get_size(self) -> int:
        return self._size

    def get_idle_size(self) -> int:
        return len(self._idle)

    # ---------------------------------------------------------------------------------

    async def acquire(self, max_wait: float) -> asyncpg.Connection:
        """A connection for the caller's exclusive use until :meth:`release`.

        ``max_wait`` (seconds) rather than an ``asyncio.timeout`` around the call: the
        timer is armed only when there is no idle connection, not on the hot path."""
        if self._closed:
            raise asyncpg.InterfaceError("the connection pool is closed")
        while self._idle:  # the hot path: no await at all
            conn = self._idle.pop()
            timer = self._timers.pop(conn, None)
            if timer is not None:
                timer.cancel()
            if conn.is_closed():  # the server went away while it sat idle
                self._size -= 1
                continue
            self._in_use.add(conn)
            return conn
        async with asyncio.timeout(max_wait):
            if self._size < self._max_size:
                self._size += 1
                return await self._open()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # woken just as we were cancelled or timed out: pass the turn on
                    given = waiter.result()
                    if given is not None:
                        self.release(given)
                    else:
                        self._free_place()
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            if conn is not None:
                return conn
            # a place was freed for us (still counted in _size): open a connection in it
            return await self._open()

    async def _open(self) -> asyncpg.Connection:
        """Open a connection in a place already counted in ``_size``."""
        try:
            conn = await self._connect()
        except BaseException:
            self._free_place()
            raise
        if self._closed:
            conn.terminate()
            self._size -= 1
            raise asyncpg.InterfaceError("the connection pool is closed")
        self._in_use.add(conn)
        return conn

    def release(self, conn: asyncpg.Connection) -> None:
        """Take back a connection from :meth:`acquire`. Never waits."""
        if conn not in self._in_use:
            return  # released twice: nothing to do
        self._in_use.remove(conn)
        if conn.is_closed() or conn.is_in_transaction():
            # broken, or a transaction left open by an interrupted caller: never reuse it
            conn.terminate()
            self._free_place()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_use.add(conn)
                waiter.set_result(conn)
                return
        self._idle.append(conn)  # after close(), for close() to close it
        if self._max_inactive and not self._closed:
            self._timers[conn] = asyncio.get_running_loop().call_later(
                self._max_inactive, self._expire_idle, conn
            )
        self._notify_if_all_back()

    def _free_place(self) -> None:
        """A connection is gone: let a waiter open a new one, or shrink."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the place passes to it; _size unchanged
                return
        self._size -= 1
        self._notify_if_all_back()

    def _expire_idle(self, conn: asyncpg.Connection) -> None:
        self._timers.pop(conn, None)
        if conn in self._idle and self._size > self._min_size:
            self._idle.remove(conn)
            self._size -= 1
            conn.terminate()

    def _notify_if_all_back(self) -> None:
        if self._all_back is not None and not self._in_use:
            self._all_back.set()

    # ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Refuse new acquisitions, wait for connections in use, close every connection."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the connection pool is closed"))
        self._waiters.clear()
        if self._in_use:
            self._all_back = asyncio.Event()
            await self._all_back.wait()
        idle, self._idle = self._idle, []
        self._cancel_timers()
        self._size -= len(idle)
        await asyncio.gather(*(conn.close() for conn in idle), return_exceptions=True)

    def terminate(self) -> None:
        """Close every connection at once, in use or not."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the connection pool is closed"))
        self._waiters.clear()
        self._cancel_timers()
        for conn in [*self._idle, *self._in_use]:
            conn.terminate()
        self._idle.clear()
        self._in_use.clear()
        self._size = 0
        if self._all_back is not None:
            self._all_back.set()

    def _cancel_timers(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
