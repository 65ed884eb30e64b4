"""Bulk jobs in bounded batches: the loop ``expire_stale_fields`` and ``mark_orphans`` share.

A bulk job (expire the stale fields of a tenant, mark its orphans) never runs as one
statement over the whole tenant: that statement grows with the tenant and, on a 10-million-row
tenant, outlives any ``statement_timeout`` and rolls back, so the job never progresses. Core
owns the loop instead; a provider implements one *batch* (``_expire_stale_fields_batch``,
``_mark_orphans_batch`` in :mod:`ccvault.store`): at most ``limit`` rows, in one transaction
of its own. Each batch selects what is *still due*, so the job is resumable for free: after a
crash (or a timeout, or a lost worker claim) between two batches, every committed batch stays
done and the next run simply continues with what is left.

The loop stops at the first batch that did less than ``limit`` rows (nothing due is left, as
far as that batch could see) and after at most :data:`MAX_BATCHES` batches (a bound, never
reached by a job that makes progress). After every batch the optional progress callback
receives a :class:`BatchProgress` (rows done so far, rate, ETA when a total was estimated).

A leaf module: it imports nothing from ``ccvault``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCHES",
    "MAX_BATCH_SIZE",
    "BatchProgress",
    "ProgressCallback",
    "run_batches",
]

#: rows per batch when the caller names none ([worker] batch_size overrides it): small
#: enough that one batch of scattered rows (each UPDATE also writes index entries) stays far
#: below a 3 s statement_timeout on a loaded server with a cold cache
DEFAULT_BATCH_SIZE = 1_000
#: the largest batch a caller may ask for: one transaction must stay short
MAX_BATCH_SIZE = 100_000
#: batches per job at most: 10^6 batches of even one row each is far more than any tenant
#: holds; the bound only keeps a misbehaving provider (always reporting a full batch) finite
MAX_BATCHES = 1_000_000


@dataclass(frozen=True)
class BatchProgress:
    """Where a bulk job stands after one batch (no personal data: ids and counts only).

    ``job`` is ``"expire"`` or ``"mark_orphans"``; ``rows`` what this batch did; ``done``
    the total so far; ``rate`` rows per second since the job started; ``estimated_total``
    the caller's estimate of the job's size (None when unknown) and ``eta_seconds`` the time
    left at the current rate (None without an estimate); ``finished`` is True on the last
    report of the job.
    """

    job: str
    tenant_id: UUID
    batch: int
    rows: int
    done: int
    elapsed_seconds: float
    batch_size: int
    estimated_total: int | None = None
    finished: bool = False

    @property
    def rate(self) -> float:
        """Rows per second since the job started (0.0 before any time has passed)."""
        return self.done / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate; None without an estimate or a rate."""
        if self.finished:
            return 0.0
        if self.estimated_total is None or self.rate <= 0:
            return None
        return max(self.estimated_total - self.done, 0) / self.rate


#: called after every batch; may be sync or async (an awaitable result is awaited)
ProgressCallback = Callable[[BatchProgress], Awaitable[None] | None]


async def run_batches(
    job: str,
    tenant_id: UUID,
    batch: Callable[[int], Awaitable[int]],
    *,
    batch_size: int,
    progress: ProgressCallback | None = None,
    estimated_total: int | None = None,
    max_batches: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run ``batch(batch_size)`` until one does less than ``batch_size`` rows (or
    ``max_batches`` batches ran); return the total. ``batch`` does one batch in one
    transaction and returns its row count. An exception from a batch (or from ``progress``)
    propagates: the batches before it are committed, the job is resumable by running it
    again."""
    started = clock()
    done = 0
    last = min(max_batches or MAX_BATCHES, MAX_BATCHES)
    for number in range(1, last + 1):
        rows = await batch(batch_size)
        done += rows
        finished = rows < batch_size or number == last
        if progress is not None:
            report = BatchProgress(
                job=job,
                tenant_id=tenant_id,
                batch=number,
                rows=rows,
                done=done,
                elapsed_seconds=clock() - started,
                batch_size=batch_size,
                estimated_total=estimated_total,
                finished=finished,
            )
            pending = progress(report)
            if pending is not None:
                await pending
        if finished:
            break
    return done
