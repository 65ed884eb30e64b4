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

A leaf module: it imports only :mod:`ccvault.errors` from ``ccvault``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

from ccvault import errors

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCHES",
    "MAX_BATCH_SIZE",
    "BatchProgress",
    "KeysetBatch",
    "ProgressCallback",
    "parse_orphans_position",
    "run_batches",
    "run_keyset_batches",
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
    #: candidate rows the batch examined (keyset jobs: at most ``batch_size``; None when
    #: the provider does not report it)
    examined: int | None = None
    #: the opaque resume position after this batch (keyset jobs; None when done or unknown):
    #: passing it back as ``start_after`` continues the job from here after a crash
    resume_after: str | None = None

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

    async def counted(size: int, _cursor: str | None) -> KeysetBatch:
        return KeysetBatch(await batch(size), None, None)

    return await _run(
        job,
        tenant_id,
        counted,
        lambda result: result.marked < batch_size,
        batch_size=batch_size,
        start_after=None,
        progress=progress,
        estimated_total=estimated_total,
        max_batches=max_batches,
        clock=clock,
    )


#: the longest resume position a provider may return or a caller may pass back
MAX_CURSOR_LENGTH = 200


@dataclass(frozen=True)
class KeysetBatch:
    """What one keyset batch did: ``marked`` rows changed, ``examined`` candidate rows read
    (at most the batch's ``limit``; None when the provider cannot tell), ``resume_after`` the
    opaque position to continue after (None: the job is done)."""

    marked: int
    examined: int | None
    resume_after: str | None


async def run_keyset_batches(
    job: str,
    tenant_id: UUID,
    batch: Callable[[int, str | None], Awaitable[KeysetBatch]],
    *,
    batch_size: int,
    start_after: str | None = None,
    progress: ProgressCallback | None = None,
    estimated_total: int | None = None,
    max_batches: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run ``batch(batch_size, cursor)`` from ``start_after`` (None: the beginning), each
    time with the cursor the previous batch returned, until a batch returns
    ``resume_after=None`` (or ``max_batches`` batches ran); return the rows marked in total.

    Unlike :func:`run_batches`, a batch bounds the rows it *examines*, not only the rows it
    changes, and the next batch starts after them: the total work is linear in the tenant's
    size however few rows are due. Marking is idempotent, so a crashed job rerun from the
    beginning (or from the last reported ``resume_after``) stays correct."""
    return await _run(
        job,
        tenant_id,
        batch,
        lambda result: result.resume_after is None,
        batch_size=batch_size,
        start_after=start_after,
        progress=progress,
        estimated_total=estimated_total,
        max_batches=max_batches,
        clock=clock,
    )


async def _run(
    job: str,
    tenant_id: UUID,
    batch: Callable[[int, str | None], Awaitable[KeysetBatch]],
    done_after: Callable[[KeysetBatch], bool],
    *,
    batch_size: int,
    start_after: str | None,
    progress: ProgressCallback | None,
    estimated_total: int | None,
    max_batches: int | None,
    clock: Callable[[], float],
) -> int:
    """The loop of both runners: ``batch(batch_size, cursor)`` until ``done_after`` says a
    batch was the last (or ``max_batches`` batches ran), each time with the position the
    previous batch returned, a progress report after every batch; the rows marked in total."""
    started = clock()
    done = 0
    cursor = start_after
    last = min(max_batches or MAX_BATCHES, MAX_BATCHES)
    for number in range(1, last + 1):
        result = await batch(batch_size, cursor)
        cursor = result.resume_after
        done += result.marked
        finished = done_after(result) or number == last
        if progress is not None:
            pending = progress(
                BatchProgress(
                    job=job,
                    tenant_id=tenant_id,
                    batch=number,
                    rows=result.marked,
                    done=done,
                    elapsed_seconds=clock() - started,
                    batch_size=batch_size,
                    estimated_total=estimated_total,
                    finished=finished,
                    examined=result.examined,
                    resume_after=cursor,
                )
            )
            if pending is not None:
                await pending
        if finished:
            break
    return done


def parse_orphans_position(after: str | None) -> tuple[str, UUID | None]:
    """A ``_mark_orphans_page`` resume position as (kind, last id examined or None).

    Every in-repo provider walks derived fields, then derived assets, in id order and
    writes its position as ``"field:<uuid>"``, ``"asset:"`` (assets from the start) or
    ``"asset:<uuid>"``; ``None`` is the beginning (``("field", None)``). Anything else
    (a position this layout never writes) is a :class:`~ccvault.errors.ValidationError`,
    raised before the page reads or writes anything."""
    if after is None:
        return "field", None
    kind, _, last = after.partition(":")
    if kind not in ("field", "asset") or (kind == "field" and not last):
        raise errors.ValidationError("not a mark_orphans resume position of this provider")
    try:
        return kind, UUID(last) if last else None
    except ValueError:
        raise errors.ValidationError(
            "not a mark_orphans resume position of this provider"
        ) from None
