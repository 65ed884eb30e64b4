"""The worker's PostgreSQL advisory-lock lease, contributed through ``ccvault_worker_lease``.

``[worker] lease = "postgres"`` (or ``"auto"`` on the postgres provider with the cache off)
gives ``ccvault worker`` a :class:`PostgresAdvisoryLease`: tenant claims shared by every
worker on every host that uses the same database, without Redis. See
:class:`ccvault.lease.TenantLease` for the contract every lease honours.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from typing import Any
from uuid import UUID

import asyncpg
import pydantic

from ccvault import errors
from ccvault.settings import VaultSettings
from ccvault_postgres.settings import PostgresSettings

__all__ = ["PostgresAdvisoryLease"]

logger = logging.getLogger("ccvault.worker")


class PostgresAdvisoryLease:
    """Tenant claims as PostgreSQL session-level advisory locks, for workers on several
    hosts sharing one database without Redis.

    The lock key is a 64-bit hash of the ``[providers.postgres] schema`` and the tenant id
    (two vaults in one database do not collide), taken with ``pg_try_advisory_lock`` on one
    dedicated connection per lease (opened lazily, reopened after a loss). PostgreSQL
    releases every lock of a session when it ends, so a worker that dies or loses its
    connection frees its tenants at once; a lease whose connection was lost answers False
    to ``renew``. As with the other leases a claim is kept for ``ttl_seconds`` after its
    last renewal (unlocked lazily, on this lease's next call) so a tenant is swept about
    once per interval. Needs a direct, session-mode connection (not a transaction-pooling
    proxy, which would hand the lock to another client).
    """

    def __init__(
        self, dsn: str, namespace: str = "public", *, connect_timeout_seconds: float = 5.0
    ) -> None:
        self.dsn = dsn
        self.namespace = namespace
        self.connect_timeout_seconds = connect_timeout_seconds
        self.token = secrets.token_hex(16)
        self._conn: Any = None
        self._held: dict[UUID, float] = {}  # tenant -> time.monotonic() the claim lapses
        self._mutex = asyncio.Lock()  # one connection: one query at a time

    @classmethod
    def from_settings(cls, settings: VaultSettings) -> PostgresAdvisoryLease:
        """A lease on ``[providers.postgres] dsn`` (locks namespaced by its ``schema``),
        validated by the provider's own settings model."""
        try:
            options = PostgresSettings.model_validate(settings.provider_options("postgres"))
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"providers.postgres.{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}"
                for problem in exc.errors(include_input=False, include_url=False)
            )
            raise errors.ConfigurationError(
                f"worker lease (PostgreSQL advisory locks): {problems}"
            ) from None
        return cls(
            options.dsn.get_secret_value(),
            options.db_schema,
            connect_timeout_seconds=options.connect_timeout_seconds,
        )

    def lock_key(self, tenant_id: UUID) -> int:
        """The signed 64-bit advisory-lock key of a tenant."""
        digest = hashlib.blake2b(
            f"ccvault-worker\0{self.namespace}\0{tenant_id}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big", signed=True)

    async def _drop(self) -> None:
        # the session is gone or unusable: every lock it held is gone with it
        self._held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _connection(self) -> Any:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        await self._drop()
        try:
            self._conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout_seconds)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise errors.ProviderUnavailableError(
                f"worker lease: PostgreSQL is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        return self._conn

    async def acquire(self, tenant_id: UUID, ttl_seconds: float) -> str | None:
        async with self._mutex:
            conn = await self._connection()
            now = time.monotonic()
            try:
                for held, until in list(self._held.items()):
                    if held != tenant_id and until <= now:
                        await conn.fetchval("SELECT pg_advisory_unlock($1)", self.lock_key(held))
                        del self._held[held]
                if tenant_id in self._held:
                    # re-entrant without locking twice (session locks stack)
                    self._held[tenant_id] = now + ttl_seconds
                    return self.token
                won = await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1)", self.lock_key(tenant_id)
                )
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                await self._drop()
                raise errors.ProviderUnavailableError(
                    f"worker lease: PostgreSQL failed ({type(exc).__name__}: {exc})"
                ) from exc
            if not won:
                return None
            self._held[tenant_id] = now + ttl_seconds
            return self.token

    async def renew(self, tenant_id: UUID, token: str, ttl_seconds: float) -> bool:
        if token != self.token:
            return False
        async with self._mutex:
            conn = self._conn
            if tenant_id not in self._held or conn is None or conn.is_closed():
                return False
            try:
                # our locks live exactly as long as this session: a round trip proves it
                await conn.fetchval("SELECT 1", timeout=max(1.0, ttl_seconds / 3))
            except Exception as exc:  # asyncpg's connection errors, timeouts
                logger.warning(
                    "claim on tenant %s lost with the PostgreSQL session (%s)",
                    tenant_id,
                    type(exc).__name__,
                )
                await self._drop()
                return False
            self._held[tenant_id] = time.monotonic() + ttl_seconds
            return True

    async def aclose(self) -> None:
        async with self._mutex:
            conn, self._conn = self._conn, None
            self._held.clear()
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):  # closing ends the session: locks go too
                    await conn.close(timeout=self.connect_timeout_seconds)
                if not conn.is_closed():
                    conn.terminate()
