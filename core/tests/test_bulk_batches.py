"""``ccvault.batches``: the loop core runs for bulk jobs, and the compatibility of providers
written before batching (single-step hooks only)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID, uuid4

import pytest

from ccvault.batches import MAX_BATCHES, BatchProgress, run_batches
from ccvault.models import Channel, ProfileField, utcnow
from ccvault.store import ProfileStore
from ccvault_inmemory import InMemoryProfileStore

TENANT = UUID(int=17)


class _Clock:
    """A clock advancing one second per reading (deterministic rates)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _rows(*counts: int) -> object:
    remaining = list(counts)
    limits: list[int] = []

    async def batch(limit: int) -> int:
        limits.append(limit)
        return remaining.pop(0)

    batch.limits = limits  # type: ignore[attr-defined]
    return batch


async def test_the_loop_stops_at_the_first_short_batch_and_reports_each() -> None:
    reports: list[BatchProgress] = []
    batch = _rows(3, 3, 1, 99)
    done = await run_batches(
        "expire",
        TENANT,
        batch,  # type: ignore[arg-type]
        batch_size=3,
        progress=reports.append,
        estimated_total=10,
        clock=_Clock(),
    )
    assert done == 7 and batch.limits == [3, 3, 3]  # type: ignore[attr-defined]
    assert [(r.batch, r.rows, r.done, r.finished) for r in reports] == [
        (1, 3, 3, False),
        (2, 3, 6, False),
        (3, 1, 7, True),
    ]
    # one clock reading per report after the start: 1 s, 2 s, 3 s elapsed
    assert [r.elapsed_seconds for r in reports] == [1.0, 2.0, 3.0]
    assert reports[0].rate == 3.0 and reports[0].eta_seconds == pytest.approx(7 / 3)
    assert reports[-1].eta_seconds == 0.0


async def test_an_async_progress_callback_is_awaited_and_max_batches_stops_early() -> None:
    seen: list[int] = []

    async def progress(report: BatchProgress) -> None:
        seen.append(report.rows)

    done = await run_batches(
        "mark_orphans",
        TENANT,
        _rows(2, 2, 2),  # type: ignore[arg-type]
        batch_size=2,
        progress=progress,
        max_batches=2,
    )
    assert done == 4 and seen == [2, 2]
    assert MAX_BATCHES >= 1_000_000


async def test_without_an_estimate_there_is_no_eta() -> None:
    reports: list[BatchProgress] = []
    await run_batches("expire", TENANT, _rows(0), batch_size=5, progress=reports.append)  # type: ignore[arg-type]
    assert reports[0].eta_seconds == 0.0  # finished
    unfinished = BatchProgress("expire", TENANT, 1, 5, 5, 1.0, 5)
    assert unfinished.eta_seconds is None


class _SingleStepStore(InMemoryProfileStore):
    """A provider written before batching: only the single-step hooks."""

    calls: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    async def _expire_stale_fields(
        self, tenant_id: UUID, profile_id: UUID | None, now: datetime
    ) -> int:
        self.calls.append("expire")
        return self._sweep(self._tenant(tenant_id), profile_id, now)

    async def _mark_orphans(self, tenant_id: UUID) -> int:
        self.calls.append("orphans")
        return 0

    # as if the batch hooks were not there: the defaults of ProfileStore
    _expire_stale_fields_batch = ProfileStore._expire_stale_fields_batch
    _mark_orphans_batch = ProfileStore._mark_orphans_batch
    _mark_orphans_page = ProfileStore._mark_orphans_page


async def test_a_provider_with_only_the_single_step_hooks_still_works() -> None:
    async with _SingleStepStore() as store:
        past = utcnow() - timedelta(seconds=5)
        for number in range(3):
            profile = await store.get_or_create(TENANT, Channel.WEB, f"u{number}")
            await store.update_field(
                TENANT, profile.id, ProfileField(name="otp", value=1, expires_at=past)
            )
        # its one step is one big batch: 3 rows, more than the batch size, so one more call
        assert await store.expire_stale_fields(TENANT, batch_size=2) == 3
        assert await store.mark_orphans(TENANT, batch_size=2) == 0
        assert store.calls == ["expire", "expire", "orphans"]


class _NeitherStore(InMemoryProfileStore):
    _expire_stale_fields_batch = ProfileStore._expire_stale_fields_batch
    _mark_orphans_batch = ProfileStore._mark_orphans_batch
    _mark_orphans_page = ProfileStore._mark_orphans_page


async def test_a_provider_with_neither_hook_gets_a_clear_error() -> None:
    async with _NeitherStore() as store:
        with pytest.raises(NotImplementedError, match="_expire_stale_fields_batch"):
            await store.expire_stale_fields(uuid4())
        with pytest.raises(NotImplementedError, match="_mark_orphans_batch"):
            await store.mark_orphans(uuid4())
