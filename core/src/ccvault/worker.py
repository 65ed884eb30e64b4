"""The background worker: expiry sweeps, orphan marking and the status gauge, tenant by tenant.

Every ``expire_check_interval_seconds`` the worker walks every tenant
(``list_tenant_ids()``) and, for each tenant it can claim: expires stale fields (when
``auto_expire_enabled``), marks orphans (when ``lineage_tracking_enabled``) and refreshes
``profile_fields_by_status``. It logs one line per tenant saying what it did.

Several workers at once
    A tenant is processed under a *claim*: a Redis key ``{prefix}ccvault:worker:{tenant}``
    set with ``SET NX PX`` to a random token, valid for one interval and renewed while the
    tenant is being processed. A worker that cannot set it skips the tenant. The claim is not
    released when the tenant is done: it lapses at the end of the interval, so across all
    workers a tenant is processed at most once per interval, and never by two at a time. A
    worker that dies mid-tenant leaves a claim that lapses after one interval; every step is
    idempotent, so the next sweep finishes the job. Redis (``[redis] url``) is used because it
    is shared by every worker whatever the storage provider. ``[worker] lease`` picks the
    lease; ``auto`` means: Redis when the cache is on; else the provider's own lease when
    it contributes one through the ``ccvault_worker_lease`` hook (the PostgreSQL provider:
    a claim row per tenant in ``ccvault_worker_claims``, shared by every host on the
    database, outliving the worker that took it like the other leases' claims); else,
    on a provider whose spec says it is single-host (SQLite, in-memory), ``flock``-guarded
    claim files (:class:`FileTenantLease`); on any other provider start-up fails and asks
    for Redis, since per-host files would let workers on several hosts double-process.

    A worker whose claim cannot be renewed (taken over, connection lost) stops processing
    that tenant before its next step and reports it as not processed: it never keeps
    sweeping a tenant it no longer holds.

Batches
    Expiry and orphan marking run in batches of ``[worker] batch_size`` rows, each its own
    transaction (:mod:`ccvault.batches`): no statement grows with the tenant, so a large
    tenant finishes under any ``statement_timeout``. Every batch is counted
    (``ccvault_worker_batches_total``, ``ccvault_worker_batch_rows_total``) and logged at
    DEBUG; a claim lost during a job stops it between two batches. The status gauge comes
    from :meth:`~ccvault.store.ProfileStore.estimate_items_by_status` (bounded cost).

Stopping
    :meth:`Worker.request_stop` (wired to SIGTERM/SIGINT by ``ccvault worker``) lets the
    batch in progress finish, then returns: a bulk job leaves between two batches (each
    committed; the next sweep continues), so a large tenant does not delay the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from ccvault import errors, metrics
from ccvault.batches import BatchProgress, ProgressCallback
from ccvault.lease import TenantLease
from ccvault.settings import VaultSettings
from ccvault.store import ProfileStore

__all__ = [
    "FileTenantLease",
    "RedisTenantLease",
    "TenantLease",
    "TenantReport",
    "Worker",
    "lease_from_settings",
]

logger = logging.getLogger("ccvault.worker")

# claim if free, or extend if already ours; never take another worker's claim
_ACQUIRE = """
local holder = redis.call('get', KEYS[1])
if not holder then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# compare-and-extend: only the holder of the token may renew its claim
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class RedisTenantLease:
    """Tenant claims as Redis keys holding this lease's token, set only when free (or
    already ours) and renewed by compare-and-extend, both atomic Lua scripts.

    One instance = one worker: its claims are re-entrant, so a worker whose claim from the
    previous sweep has not lapsed yet still processes the tenant on its next sweep.
    """

    def __init__(self, client: Any, key_prefix: str = "") -> None:
        self._redis = client
        self._prefix = key_prefix
        self.token = secrets.token_hex(16)

    @classmethod
    def from_settings(cls, settings: VaultSettings) -> RedisTenantLease:
        """A lease on ``[redis] url`` (Redis Cluster when ``[redis] cluster``)."""
        from ccvault.extras import requires_extra

        with requires_extra("cache", "The Redis tenant lease"):
            from redis.asyncio import Redis
            from redis.asyncio.cluster import RedisCluster

        options: dict[str, Any] = {
            "socket_timeout": max(settings.redis.socket_timeout_seconds, 1.0),
            "socket_connect_timeout": max(settings.redis.connect_timeout_seconds, 1.0),
        }
        client: Any
        if settings.redis.cluster:
            client = RedisCluster.from_url(settings.redis.connection_url(), **options)
        else:
            client = Redis.from_url(settings.redis.connection_url(), **options)
        return cls(client, settings.redis.key_prefix)

    def key(self, tenant_id: UUID) -> str:
        """The claim key of a tenant (hash-tagged by tenant, like the cache's keys)."""
        return f"{self._prefix}ccvault:worker:{{{tenant_id}}}"

    async def acquire(self, tenant_id: UUID, ttl_seconds: float) -> str | None:
        token = self.token
        try:
            won = await self._redis.eval(
                _ACQUIRE, 1, self.key(tenant_id), token, max(1, int(ttl_seconds * 1000))
            )
        except Exception as exc:  # redis raises its own ConnectionError/TimeoutError family
            raise errors.ProviderUnavailableError(
                f"worker lease: Redis is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        return token if won else None

    async def renew(self, tenant_id: UUID, token: str, ttl_seconds: float) -> bool:
        try:
            renewed = await self._redis.eval(
                _RENEW, 1, self.key(tenant_id), token, max(1, int(ttl_seconds * 1000))
            )
        except Exception:  # a missed renewal only shortens the claim; the next one retries
            logger.warning("could not renew the claim on tenant %s", tenant_id)
            return False
        return bool(renewed)

    async def aclose(self) -> None:
        await self._redis.aclose()


class FileTenantLease:
    """Tenant claims as small files in one directory, for workers on a single host without
    Redis (the embedded SQLite setup). Same semantics as :class:`RedisTenantLease`.

    Each claim file holds ``TOKEN EXPIRES_AT``; it is read and rewritten only under an
    exclusive ``flock`` of the file, so check-and-claim is atomic between processes.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.token = secrets.token_hex(16)

    @classmethod
    def from_settings(cls, settings: VaultSettings) -> FileTenantLease:
        return cls(settings.worker.lease_dir)

    def path(self, tenant_id: UUID) -> Path:
        return self.directory / f"{tenant_id}.lease"

    def _claim(self, tenant_id: UUID, ttl_seconds: float, *, take_free: bool) -> bool:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path(tenant_id), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise errors.ConfigurationError(
                f"worker.lease_dir: cannot use {self.directory} ({exc.strerror or exc})"
            ) from None
        with os.fdopen(fd, "r+", encoding="ascii") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
            holder, _, until = handle.read().partition(" ")
            now = time.time()
            try:
                expires = float(until)
            except ValueError:  # empty or torn file: nobody holds it
                expires = 0.0
            free = not holder or expires <= now
            if holder != self.token and not (take_free and free):
                return False
            handle.seek(0)
            handle.truncate()
            handle.write(f"{self.token} {now + ttl_seconds}")
            return True

    async def acquire(self, tenant_id: UUID, ttl_seconds: float) -> str | None:
        won = await asyncio.to_thread(self._claim, tenant_id, ttl_seconds, take_free=True)
        return self.token if won else None

    async def renew(self, tenant_id: UUID, token: str, ttl_seconds: float) -> bool:
        if token != self.token:
            return False
        return await asyncio.to_thread(self._claim, tenant_id, ttl_seconds, take_free=False)

    async def aclose(self) -> None:
        return None


def lease_from_settings(settings: VaultSettings) -> TenantLease:
    """The lease ``[worker] lease`` names.

    ``redis`` and ``file`` are core's own leases. Any other name is a lease a provider
    contributes through the ``ccvault_worker_lease`` hook (by convention named after the
    provider, e.g. ``postgres``: claim rows in its database). ``auto``: Redis when the
    cache is on; else the configured provider's own lease, if it offers one for ``auto``;
    else claim files when the provider's spec says it is single-host (an embedded file,
    process memory); on any other provider a :class:`~ccvault.errors.ConfigurationError`
    asking for Redis (per-host files cannot keep workers on several hosts apart).
    """
    from ccvault import registry

    kind = settings.worker.lease
    provider = settings.profile.store_provider
    if kind == "auto":
        if settings.profile.cache_enabled:
            kind = "redis"
        else:
            contributed = registry.worker_lease("auto", settings)
            if contributed is not None:
                return contributed
            if not registry.load_provider(provider).single_host:
                raise errors.ConfigurationError(
                    f"worker.lease = 'auto' with profile.cache_enabled = false: provider "
                    f"{provider!r} has no lease of its own and claim files only work on one "
                    "host; configure Redis ([redis] url) and set worker.lease = 'redis' (or "
                    "profile.cache_enabled = true), or worker.lease = 'file' if every worker "
                    "runs on this host"
                )
            kind = "file"
    if kind == "redis":
        return RedisTenantLease.from_settings(settings)
    if kind == "file":
        return FileTenantLease.from_settings(settings)
    contributed = registry.worker_lease(kind, settings)
    if contributed is None:
        raise errors.ConfigurationError(
            f"worker.lease = {kind!r}: neither a lease of core ('auto', 'redis', 'file') nor "
            f"one an installed provider contributes (is ccvault-{kind} installed?)"
        )
    return contributed


@dataclass
class _Claim:
    """A tenant claim in use; ``lost`` is set by the keeper when a renewal fails."""

    tenant_id: UUID
    lost: bool = False


class _ClaimLostError(Exception):
    """Raised by a bulk job's progress callback to stop it between two batches."""

    def __init__(self, job: str, batch: int) -> None:
        super().__init__(f"claim lost after batch {batch} of {job}")
        self.job = job
        self.batch = batch


class _StopRequestedError(Exception):
    """Raised by a bulk job's progress callback once a stop is requested: the job leaves
    between two batches instead of running a large tenant to its end."""

    def __init__(self, job: str, batch: int) -> None:
        super().__init__(f"stop requested after batch {batch} of {job}")
        self.job = job
        self.batch = batch


@dataclass
class TenantReport:
    """What one sweep did for one tenant (``batches``: transactions its bulk jobs ran)."""

    tenant_id: UUID
    processed: bool
    expired: int = 0
    orphaned: int = 0
    batches: int = 0
    fields_by_status: dict[str, int] = field(default_factory=dict)
    error: str | None = None


class Worker:
    """Sweeps every tenant every ``expire_check_interval_seconds``; see the module docstring."""

    def __init__(
        self,
        store: ProfileStore,
        settings: VaultSettings,
        lease: TenantLease,
        *,
        tenant_ids: Iterable[UUID] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.lease = lease
        self.tenant_ids = list(tenant_ids) if tenant_ids is not None else None
        self.interval = float(settings.profile.expire_check_interval_seconds)
        self._stop = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Stop after the batch in progress (see the module docstring). Safe to call from a
        signal handler."""
        self._stop.set()

    @contextlib.asynccontextmanager
    async def _claim(self, tenant_id: UUID) -> AsyncIterator[_Claim | None]:
        token = await self.lease.acquire(tenant_id, self.interval)
        if token is None:
            yield None
            return
        claim = _Claim(tenant_id)

        async def keep() -> None:
            while True:
                await asyncio.sleep(self.interval / 3)
                if not await self.lease.renew(tenant_id, token, self.interval):
                    # another worker may own the tenant now: the sweep stops at its next step
                    claim.lost = True
                    logger.warning("tenant=%s claim lost: stopping its sweep", tenant_id)
                    return

        keeper = asyncio.create_task(keep())
        try:
            yield claim
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if not claim.lost:
                # kept until it lapses: nobody else sweeps this tenant this interval
                await self.lease.renew(tenant_id, token, self.interval)

    async def process_tenant(self, tenant_id: UUID) -> TenantReport:
        """Claim and sweep one tenant (expire, orphans, gauge); skipped if claimed elsewhere."""
        profile = self.settings.profile
        async with self._claim(tenant_id) as claim:
            if claim is None:
                logger.info("tenant=%s skipped (claimed by another worker)", tenant_id)
                return TenantReport(tenant_id, processed=False)
            # shielded so a cancellation (e.g. a second Ctrl-C) cannot cut a tenant in half
            report = await asyncio.shield(
                self._sweep(tenant_id, profile.auto_expire_enabled, claim)
            )
        if report.error is not None:
            logger.warning(
                "tenant=%s stopped: %s (expired=%d orphaned=%d before that)",
                tenant_id,
                report.error,
                report.expired,
                report.orphaned,
            )
            return report
        logger.info(
            "tenant=%s processed expired=%d orphaned=%d batches=%d fields_by_status=%s",
            tenant_id,
            report.expired,
            report.orphaned,
            report.batches,
            ",".join(f"{k}:{v}" for k, v in sorted(report.fields_by_status.items())),
        )
        return report

    def _batch_progress(self, claim: _Claim, report: TenantReport) -> ProgressCallback:
        """The progress callback of a bulk job: counts and logs every batch, and stops the
        job between two batches once the claim is lost (each batch is committed on its own,
        so the worker that holds the claim now continues with what is left)."""

        def on_batch(progress: BatchProgress) -> None:
            metrics.WORKER_BATCHES.labels(job=progress.job).inc()
            metrics.WORKER_BATCH_ROWS.labels(job=progress.job).inc(progress.rows)
            report.batches += 1
            if progress.job == "expire":
                report.expired = progress.done
            else:
                report.orphaned = progress.done
            logger.debug(
                "tenant=%s %s batch=%d rows=%d done=%d rate=%.0f/s",
                progress.tenant_id,
                progress.job,
                progress.batch,
                progress.rows,
                progress.done,
                progress.rate,
            )
            if claim.lost and not progress.finished:
                raise _ClaimLostError(progress.job, progress.batch)
            if self.stopping and not progress.finished:
                raise _StopRequestedError(progress.job, progress.batch)

        return on_batch

    async def _sweep(self, tenant_id: UUID, expire: bool, claim: _Claim) -> TenantReport:
        # every step, and every batch of a step, is idempotent and committed on its own, so
        # stopping between two (claim lost) leaves nothing half-done: the worker that holds
        # the claim now redoes what is left
        report = TenantReport(tenant_id, processed=True)
        steps: list[tuple[str, bool]] = [
            ("expire", expire),
            ("orphans", self.settings.profile.lineage_tracking_enabled),
            ("gauge", True),
        ]
        batch_size = self.settings.worker.batch_size
        on_batch = self._batch_progress(claim, report)
        for step, enabled in steps:
            if claim.lost:
                report.processed = False
                report.error = f"claim lost before step {step!r}; another worker may take over"
                return report
            if not enabled:
                continue
            try:
                if step == "expire":
                    report.expired = await self.store.expire_stale_fields(
                        tenant_id, batch_size=batch_size, progress=on_batch
                    )
                elif step == "orphans":
                    report.orphaned = await self.store.mark_orphans(
                        tenant_id, batch_size=batch_size, progress=on_batch
                    )
                else:
                    report.fields_by_status = await metrics.refresh_status_gauge(
                        self.store, tenant_id
                    )
            except _ClaimLostError as lost:
                report.processed = False
                report.error = (
                    f"claim lost after batch {lost.batch} of step {lost.job!r}; another "
                    "worker may take over"
                )
                return report
            except _StopRequestedError as stopped:
                # every batch so far is committed: the next sweep continues from there
                report.processed = False
                report.error = (
                    f"stop requested: left after batch {stopped.batch} of step "
                    f"{stopped.job!r}; the next sweep continues"
                )
                return report
        return report

    async def run_once(self) -> list[TenantReport]:
        """One sweep over every tenant (or the configured ones); stops early when asked."""
        tenants = (
            self.tenant_ids if self.tenant_ids is not None else await self.store.list_tenant_ids()
        )
        reports = []
        for tenant_id in tenants:
            if self.stopping:
                logger.info("stop requested: leaving before tenant=%s", tenant_id)
                break
            metrics.WORKER_HEARTBEAT.set_to_current_time()
            try:
                reports.append(await self.process_tenant(tenant_id))
            except errors.VaultError as exc:
                metrics.WORKER_TENANT_FAILURES.inc()
                # one tenant's failure (a lost connection...) must not stop the others; its
                # claim lapses after one interval and the next sweep retries it
                logger.error("tenant=%s failed: %s", tenant_id, exc)
                reports.append(TenantReport(tenant_id, processed=False, error=str(exc)))
        done = sum(1 for r in reports if r.processed)
        metrics.WORKER_LAST_SWEEP.set_to_current_time()
        if not self.stopping:
            metrics.forget_tenants(tenants)  # a tenant gone is no longer reported
        metrics.WORKER_HEARTBEAT.set_to_current_time()
        logger.info(
            "sweep done tenants=%d processed=%d failed=%d expired=%d orphaned=%d",
            len(tenants),
            done,
            sum(1 for r in reports if r.error is not None),
            sum(r.expired for r in reports),
            sum(r.orphaned for r in reports),
        )
        return reports

    async def run(self) -> None:
        """Sweep, wait one interval (or until a stop is requested), repeat."""
        logger.info(
            "worker started interval=%ss auto_expire=%s",
            self.interval,
            self.settings.profile.auto_expire_enabled,
        )
        while not self.stopping:
            try:
                await self.run_once()
            except errors.VaultError as exc:  # listing tenants failed: try again next time
                logger.error("sweep failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
        logger.info("worker stopped")
