"""The worker's PostgreSQL lease, contributed through ``ccvault_worker_lease``.

``[worker] lease = "postgres"`` (or ``"auto"`` on the postgres provider with the cache off)
gives ``ccvault worker`` a :class:`PostgresTenantLease`: tenant claims shared by every
worker on every host that uses the same database, without Redis. See
:class:`ccvault.lease.TenantLease` for the contract every lease honours.

A claim is a row of ``ccvault_worker_claims`` (created by ``ccvault migrate``, migration
3) in the vault's schema: ``(tenant_id, holder, claimed_until)``, taken with one ``INSERT
… ON CONFLICT DO UPDATE … WHERE claimed_until <= now() OR holder = me RETURNING`` and
renewed by ``UPDATE … WHERE holder = me``, both on the database's clock. Unlike the
session-level advisory locks this lease used before, a claim *outlives the process* that
took it: a worker finishing a tenant keeps it claimed for one more interval (the worker
renews it on the way out), so a second ``worker --once`` started meanwhile, or on another
host, skips that tenant instead of sweeping it again. Two workers therefore never sweep a
tenant in the same interval; a worker that dies leaves a claim that lapses after one
interval.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any
from uuid import UUID

import asyncpg
import pydantic

from ccvault import errors
from ccvault.settings import VaultSettings
from ccvault_postgres.settings import PostgresSettings

__all__ = ["CLAIMS_TABLE", "PostgresAdvisoryLease", "PostgresTenantLease"]

logger = logging.getLogger("ccvault.worker")

#: the table of tenant claims (migration 3 of :mod:`ccvault_postgres.schema`)
CLAIMS_TABLE = "ccvault_worker_claims"

# claim if free (lapsed) or already ours; never take another holder's live claim
_ACQUIRE = """
INSERT INTO {table} AS c (tenant_id, holder, claimed_until)
VALUES ($1, $2, now() + make_interval(secs => $3::float8))
ON CONFLICT (tenant_id) DO UPDATE
    SET holder = EXCLUDED.holder, claimed_until = EXCLUDED.claimed_until
    WHERE c.claimed_until <= now() OR c.holder = EXCLUDED.holder
RETURNING holder
"""
# compare-and-extend: only the holder may renew (a lapsed claim nobody took is still ours)
_RENEW = """
UPDATE {table} SET claimed_until = now() + make_interval(secs => $3::float8)
WHERE tenant_id = $1 AND holder = $2
RETURNING holder
"""

_DRIVER_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresTenantLease:
    """Tenant claims as rows of ``ccvault_worker_claims`` in the vault's schema (see the
    module docstring), for workers on several hosts sharing one database without Redis.

    One dedicated connection per lease (opened lazily, reopened after a loss); every claim
    is one statement, so it also works behind a transaction-pooling proxy. The table is
    created by ``ccvault migrate``; a lease on a database where it is missing raises
    :class:`~ccvault.errors.SchemaNotReadyError` naming that command.
    """

    def __init__(
        self, dsn: str, namespace: str = "public", *, connect_timeout_seconds: float = 5.0
    ) -> None:
        self.dsn = dsn
        self.namespace = namespace
        self.connect_timeout_seconds = connect_timeout_seconds
        self.token = secrets.token_hex(16)
        table = f"{_quote_ident(namespace)}.{CLAIMS_TABLE}"
        self._acquire_sql = _ACQUIRE.format(table=table)
        self._renew_sql = _RENEW.format(table=table)
        self._conn: Any = None
        self._mutex = asyncio.Lock()  # one connection: one query at a time

    @classmethod
    def from_settings(cls, settings: VaultSettings) -> PostgresTenantLease:
        """A lease on ``[providers.postgres] dsn`` (claims in its ``schema``), validated by
        the provider's own settings model."""
        try:
            options = PostgresSettings.model_validate(settings.provider_options("postgres"))
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"providers.postgres.{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}"
                for problem in exc.errors(include_input=False, include_url=False)
            )
            raise errors.ConfigurationError(f"worker lease (PostgreSQL): {problems}") from None
        return cls(
            options.dsn.get_secret_value(),
            options.db_schema,
            connect_timeout_seconds=options.connect_timeout_seconds,
        )

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _connection(self) -> Any:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        await self._drop()
        try:
            # a few statements per sweep: no prepared-statement cache, so the lease also works
            # through PgBouncer in transaction mode (providers.postgres.transaction_pooler)
            self._conn = await asyncpg.connect(
                self.dsn, timeout=self.connect_timeout_seconds, statement_cache_size=0
            )
        except _DRIVER_ERRORS as exc:
            raise errors.ProviderUnavailableError(
                f"worker lease: PostgreSQL is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        return self._conn

    async def acquire(self, tenant_id: UUID, ttl_seconds: float) -> str | None:
        async with self._mutex:
            conn = await self._connection()
            try:
                holder = await conn.fetchval(
                    self._acquire_sql, tenant_id, self.token, float(ttl_seconds)
                )
            except asyncpg.UndefinedTableError:
                raise errors.SchemaNotReadyError(
                    f"worker lease: the table {CLAIMS_TABLE} is missing in PostgreSQL schema "
                    f"{self.namespace!r}: run `ccvault migrate` first (with the postgres "
                    "provider and this schema)"
                ) from None
            except _DRIVER_ERRORS as exc:
                await self._drop()
                raise errors.ProviderUnavailableError(
                    f"worker lease: PostgreSQL failed ({type(exc).__name__}: {exc})"
                ) from exc
        return self.token if holder == self.token else None

    async def renew(self, tenant_id: UUID, token: str, ttl_seconds: float) -> bool:
        if token != self.token:
            return False
        async with self._mutex:
            conn = self._conn
            try:
                if conn is None or conn.is_closed():
                    conn = await self._connection()
                holder = await conn.fetchval(
                    self._renew_sql,
                    tenant_id,
                    self.token,
                    float(ttl_seconds),
                    timeout=max(1.0, ttl_seconds / 3),
                )
            except Exception as exc:  # asyncpg's connection errors, timeouts, a missing table
                logger.warning(
                    "could not renew the claim on tenant %s (%s)", tenant_id, type(exc).__name__
                )
                await self._drop()
                return False
        return bool(holder == self.token)

    async def aclose(self) -> None:
        """Close the connection. Claims stay in the table until they lapse (that is what
        keeps a tenant from being swept twice in one interval)."""
        async with self._mutex:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                try:
                    await conn.close(timeout=self.connect_timeout_seconds)
                except Exception:  # closing is best effort: a dead connection is terminated
                    conn.terminate()


#: the former name (the lease used session-level advisory locks before issue 17)
PostgresAdvisoryLease = PostgresTenantLease


def _quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
