"""``ccvault.batches.run_keyset_batches``: the loop mark_orphans runs over keyset pages."""

from __future__ import annotations

from uuid import UUID

from ccvault.batches import BatchProgress, KeysetBatch, run_keyset_batches

TENANT = UUID(int=7)


def _pages(*pages: KeysetBatch) -> tuple[list[str | None], object]:
    seen: list[str | None] = []
    queue = list(pages)

    async def page(size: int, after: str | None) -> KeysetBatch:
        seen.append(after)
        return queue.pop(0)

    return seen, page


async def test_the_cursor_is_passed_along_and_a_short_batch_does_not_end_the_job() -> None:
    seen, page = _pages(
        KeysetBatch(marked=0, examined=3, resume_after="p1"),
        KeysetBatch(marked=1, examined=3, resume_after="p2"),
        KeysetBatch(marked=2, examined=1, resume_after=None),
    )
    reports: list[BatchProgress] = []
    done = await run_keyset_batches(
        "mark_orphans",
        TENANT,
        page,
        batch_size=3,
        progress=reports.append,  # type: ignore[arg-type]
    )
    assert done == 3
    assert seen == [None, "p1", "p2"]
    assert [(r.rows, r.examined, r.resume_after, r.finished) for r in reports] == [
        (0, 3, "p1", False),
        (1, 3, "p2", False),
        (2, 1, None, True),
    ]


async def test_a_job_starts_from_the_given_position_and_max_batches_stops_it() -> None:
    seen, page = _pages(
        KeysetBatch(marked=1, examined=3, resume_after="p5"),
        KeysetBatch(marked=1, examined=3, resume_after="p6"),
    )
    reports: list[BatchProgress] = []
    done = await run_keyset_batches(
        "mark_orphans",
        TENANT,
        page,  # type: ignore[arg-type]
        batch_size=3,
        start_after="p4",
        max_batches=1,
        progress=reports.append,
    )
    assert done == 1 and seen == ["p4"]
    # cut short by max_batches: finished, and the position to resume from is reported
    assert reports[-1].finished and reports[-1].resume_after == "p5"
