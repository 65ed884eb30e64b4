"""The provider's connection pool, on the real server: reuse, limits, waiting, broken
connections, idle expiry and closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from ccvault_postgres.pool import ConnectionPool

DEADLINE = 10.0  # seconds any awaited condition may take before the test fails

Factory = Callable[..., Awaitable[ConnectionPool]]


@pytest.fixture
async def make_pool(pg_dsn: str) -> AsyncIterator[Factory]:
    pools: list[ConnectionPool] = []

    async def make(
        min_size: int = 0, max_size: int = 2, max_inactive: float = 0.0
    ) -> ConnectionPool:
        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(pg_dsn, timeout=DEADLINE)

        pool = ConnectionPool(
            connect, min_size=min_size, max_size=max_size, max_inactive=max_inactive
        )
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.terminate()


async def test_min_size_opened_and_idle_connection_reused(make_pool: Factory) -> None:
    pool = await make_pool(min_size=2, max_size=3)
    assert pool.get_size() == 2 and pool.get_idle_size() == 2
    first = await pool.acquire(DEADLINE)
    pool.release(first)
    again = await pool.acquire(DEADLINE)
    assert again is first  # the most recently used connection comes back first
    assert await again.fetchval("SELECT 1") == 1
    pool.release(again)
    assert pool.get_size() == 2


async def test_waiter_gets_the_released_connection_and_timeout_is_honoured(
    make_pool: Factory,
) -> None:
    pool = await make_pool(max_size=1)
    held = await pool.acquire(DEADLINE)
    with pytest.raises(TimeoutError):
        await pool.acquire(0.05)  # nothing free, nothing may be opened
    waiting = asyncio.ensure_future(pool.acquire(DEADLINE))
    # one turn of the loop (not a timed wait): the task runs until it waits on the pool
    await asyncio.sleep(0)
    assert not waiting.done()
    pool.release(held)
    assert await asyncio.wait_for(waiting, DEADLINE) is held
    pool.release(held)
    assert pool.get_size() == 1 and pool.get_idle_size() == 1


async def test_broken_or_in_transaction_connections_are_dropped_and_replaced(
    make_pool: Factory,
) -> None:
    pool = await make_pool(max_size=1)
    conn = await pool.acquire(DEADLINE)
    conn.terminate()  # as the store does with a connection that lost its server
    pool.release(conn)
    assert pool.get_size() == 0
    fresh = await pool.acquire(DEADLINE)
    assert fresh is not conn and await fresh.fetchval("SELECT 2") == 2
    transaction = fresh.transaction()
    await transaction.start()
    pool.release(fresh)  # left inside a transaction: never handed out again
    assert fresh.is_closed() and pool.get_size() == 0

    # a waiter is woken to open a connection of its own when the holder's one breaks
    held = await pool.acquire(DEADLINE)
    waiting = asyncio.ensure_future(pool.acquire(DEADLINE))
    await asyncio.sleep(0)
    held.terminate()
    pool.release(held)
    replacement = await asyncio.wait_for(waiting, DEADLINE)
    assert replacement is not held and await replacement.fetchval("SELECT 3") == 3
    pool.release(replacement)
    assert pool.get_size() == 1


async def test_cancelled_waiter_does_not_leak_its_place(make_pool: Factory) -> None:
    pool = await make_pool(max_size=1)
    held = await pool.acquire(DEADLINE)
    waiting = asyncio.ensure_future(pool.acquire(DEADLINE))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    pool.release(held)
    assert await pool.acquire(DEADLINE) is held


async def test_idle_connections_beyond_min_size_expire(make_pool: Factory) -> None:
    pool = await make_pool(min_size=1, max_size=3, max_inactive=0.05)
    a, b = await pool.acquire(DEADLINE), await pool.acquire(DEADLINE)
    pool.release(a)
    pool.release(b)
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while pool.get_size() > 1:  # poll for the condition, bounded
        assert asyncio.get_running_loop().time() < deadline, "idle connection never expired"
        await asyncio.sleep(0.01)
    assert pool.get_idle_size() == 1  # min_size is kept


async def test_close_waits_for_connections_in_use(make_pool: Factory) -> None:
    pool = await make_pool(min_size=1, max_size=2)
    held = await pool.acquire(DEADLINE)
    closing = asyncio.ensure_future(pool.close())
    await asyncio.sleep(0)
    assert not closing.done()
    with pytest.raises(asyncpg.InterfaceError):
        await pool.acquire(DEADLINE)
    assert await held.fetchval("SELECT 4") == 4  # still usable until released
    pool.release(held)
    await asyncio.wait_for(closing, DEADLINE)
    assert held.is_closed() and pool.get_size() == 0
