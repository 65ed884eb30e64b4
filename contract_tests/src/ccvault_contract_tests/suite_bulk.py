"""Bulk jobs in bounded batches: ``expire_stale_fields`` and ``mark_orphans``.

Core runs the loop (:mod:`ccvault.batches`); a provider implements one batch per call, in
one transaction: ``_expire_stale_fields_batch`` (at most ``limit`` rows) and, for
mark_orphans, the keyset page ``_mark_orphans_page`` (at most ``limit`` derived items
*examined*, after the resume position the previous page returned). These tests check,
through the public methods, that a tenant with more due rows than the batch size is covered
completely, that no batch does or examines more than ``batch_size`` rows (the per-batch
counts reported to the progress callback), that a batch marking few orphans does not end
the job, and that a job cut short between two batches (an exception after batch 1) leaves a
consistent store that a second run (from the start or the reported position) finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID, uuid4

import pytest

from ccvault import errors
from ccvault.batches import BatchProgress
from ccvault.models import ItemStatus, SourceType
from ccvault.store import ProfileStore
from ccvault_contract_tests.base import ContractBase
from ccvault_contract_tests.helpers import make_asset, make_field, new_profile, snapshot, ts

__all__ = ["BulkJobsContract"]

_BATCH = 5
_DUE = 12  # more than two batches: batches of 5, 5 and 2


class _Interrupted(Exception):
    """Raised by a progress callback to cut a job short between two batches."""


def _recorder(
    reports: list[BatchProgress], *, fail_after: int | None = None
) -> Callable[[BatchProgress], None]:
    def record(report: BatchProgress) -> None:
        reports.append(report)
        if fail_after is not None and report.batch == fail_after:
            raise _Interrupted(f"stopped after batch {report.batch}")

    return record


class BulkJobsContract(ContractBase):
    async def _due_fields(
        self, store: ProfileStore, tenant: UUID, base: datetime, count: int = _DUE
    ) -> list[tuple[UUID, UUID]]:
        """``count`` profiles, each with one field past ``expires_at`` (one per profile: a
        second due field written to the same profile would expire the first at once)."""
        made = []
        for _ in range(count):
            profile = await new_profile(store, tenant)
            field_id = await store.update_field(
                tenant,
                profile.id,
                make_field(
                    "otp",
                    "123456",
                    collected_at=base - timedelta(hours=2),
                    expires_at=base - timedelta(hours=1),
                ),
            )
            made.append((profile.id, field_id))
        return made

    async def _fresh_field(self, store: ProfileStore, tenant: UUID, base: datetime) -> UUID:
        profile = await new_profile(store, tenant)
        return await store.update_field(
            tenant,
            profile.id,
            make_field("otp", "654321", collected_at=base, expires_at=base + timedelta(hours=1)),
        )

    async def _stored_fields(self, store: ProfileStore, tenant: UUID) -> dict[str, int]:
        counted = await store.count_items_by_status(tenant)
        return counted["fields"]

    # ---------------------------------------------------------------- expire

    async def test_expire_covers_a_tenant_larger_than_the_batch(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        base = ts()
        due = await self._due_fields(store, tenant, base)
        await self._fresh_field(store, tenant, base)
        reports: list[BatchProgress] = []
        assert (
            await store.expire_stale_fields(
                tenant, batch_size=_BATCH, progress=_recorder(reports), estimated_total=_DUE
            )
            == _DUE
        )
        assert [r.rows for r in reports] == [5, 5, 2]
        assert all(r.rows <= _BATCH and r.batch_size == _BATCH for r in reports)
        assert [r.done for r in reports] == [5, 10, 12]
        assert [r.finished for r in reports] == [False, False, True]
        assert reports[-1].eta_seconds == 0.0
        for profile_id, field_id in due:
            found = await store.get_field(tenant, profile_id, "otp", status=ItemStatus.EXPIRED)
            assert found is not None and found.id == field_id
        stored = await self._stored_fields(store, tenant)
        assert stored["expired"] == _DUE and stored["active"] == 1
        assert await store.expire_stale_fields(tenant, batch_size=_BATCH) == 0

    async def test_expire_of_one_profile_in_batches_leaves_the_others_due(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        base = ts()
        due = await self._due_fields(store, tenant, base, count=3)
        reports: list[BatchProgress] = []
        assert (
            await store.expire_stale_fields(
                tenant, due[0][0], batch_size=1, progress=_recorder(reports)
            )
            == 1
        )
        assert [r.rows for r in reports] == [1, 0]
        stored = await self._stored_fields(store, tenant)
        assert stored["expired"] == 1 and stored["active"] == 2

    async def test_expire_cut_short_between_batches_is_finished_by_a_rerun(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        base = ts()
        await self._due_fields(store, tenant, base)
        reports: list[BatchProgress] = []
        with pytest.raises(_Interrupted):
            await store.expire_stale_fields(
                tenant, batch_size=_BATCH, progress=_recorder(reports, fail_after=1)
            )
        assert [r.rows for r in reports] == [_BATCH]
        # batch 1 is committed, nothing of batch 2 was done: every version in one status
        stored = await self._stored_fields(store, tenant)
        assert stored["expired"] == _BATCH and stored["active"] == _DUE - _BATCH
        assert sum(stored.values()) == _DUE
        rerun: list[BatchProgress] = []
        assert (
            await store.expire_stale_fields(tenant, batch_size=_BATCH, progress=_recorder(rerun))
            == _DUE - _BATCH
        )
        assert all(r.rows <= _BATCH for r in rerun)
        stored = await self._stored_fields(store, tenant)
        assert stored["expired"] == _DUE and stored["active"] == 0

    async def test_expire_max_batches_stops_after_that_many(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        base = ts()
        await self._due_fields(store, tenant, base)
        assert await store.expire_stale_fields(tenant, batch_size=_BATCH, max_batches=1) == 5
        assert (await self._stored_fields(store, tenant))["active"] == _DUE - _BATCH
        assert await store.expire_stale_fields(tenant, batch_size=_BATCH) == _DUE - _BATCH

    # ---------------------------------------------------------------- mark_orphans

    async def _derived(
        self,
        store: ProfileStore,
        tenant: UUID,
        profile_id: UUID,
        base: datetime,
        *,
        fields_from: list[UUID],
        assets_from: list[UUID],
        asset_source_type: SourceType,
    ) -> None:
        """Fields ``derived_<n>`` (value n, from profile field ``fields_from[n]``) and assets
        ``derived_doc_<n>`` (from ``assets_from[n]``, of ``asset_source_type``)."""
        for number, source in enumerate(fields_from):
            await store.update_field(
                tenant,
                profile_id,
                make_field(
                    f"derived_{number}",
                    number,
                    collected_at=base,
                    source_item_id=source,
                    source_item_type=SourceType.PROFILE_FIELD,
                ),
            )
        for number, source in enumerate(assets_from):
            await store.add_asset(
                tenant,
                profile_id,
                make_asset(
                    f"derived_doc_{number}",
                    uploaded_at=base,
                    source_item_id=source,
                    source_item_type=asset_source_type,
                ),
            )

    async def _orphans(self, store: ProfileStore, tenant: UUID, base: datetime) -> UUID:
        """One profile with 7 fields and 5 assets derived from sources that never existed."""
        profile = await new_profile(store, tenant)
        await self._derived(
            store,
            tenant,
            profile.id,
            base,
            fields_from=[uuid4() for _ in range(7)],
            assets_from=[uuid4() for _ in range(5)],
            asset_source_type=SourceType.PROFILE_ASSET,
        )
        await store.update_field(tenant, profile.id, make_field("plain", 1, collected_at=base))
        return profile.id

    async def test_mark_orphans_covers_more_orphans_than_the_batch(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        await self._orphans(store, tenant, ts())
        reports: list[BatchProgress] = []
        assert (
            await store.mark_orphans(tenant, batch_size=_BATCH, progress=_recorder(reports)) == 12
        )
        # keyset pages: each examines at most _BATCH derived items, each item once
        assert all(r.rows <= _BATCH for r in reports) and sum(r.rows for r in reports) == 12
        assert all(r.examined is not None and r.examined <= _BATCH for r in reports)
        assert sum(r.examined or 0 for r in reports) == 12
        assert all(r.job == "mark_orphans" for r in reports)
        assert reports[-1].finished and reports[-1].resume_after is None
        counted = await store.count_items_by_status(tenant)
        assert counted["fields"]["orphaned"] == 7 and counted["fields"]["active"] == 1
        assert counted["assets"]["orphaned"] == 5 and counted["assets"]["active"] == 0
        assert await store.mark_orphans(tenant, batch_size=_BATCH) == 0

    async def test_mark_orphans_cut_short_between_batches_is_finished_by_a_rerun(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        await self._orphans(store, tenant, ts())
        reports: list[BatchProgress] = []
        with pytest.raises(_Interrupted):
            await store.mark_orphans(
                tenant, batch_size=_BATCH, progress=_recorder(reports, fail_after=1)
            )
        counted = await store.count_items_by_status(tenant)
        orphaned = counted["fields"]["orphaned"] + counted["assets"]["orphaned"]
        assert orphaned == _BATCH
        assert counted["fields"]["active"] + counted["assets"]["active"] == 13 - _BATCH
        assert await store.mark_orphans(tenant, batch_size=_BATCH) == 12 - _BATCH
        counted = await store.count_items_by_status(tenant)
        assert counted["fields"]["orphaned"] == 7 and counted["assets"]["orphaned"] == 5

    async def test_mark_orphans_resumes_from_the_reported_position(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        await self._orphans(store, tenant, ts())
        first: list[BatchProgress] = []
        with pytest.raises(_Interrupted):
            await store.mark_orphans(
                tenant, batch_size=_BATCH, progress=_recorder(first, fail_after=1)
            )
        position = first[-1].resume_after
        assert position is not None and first[-1].examined == _BATCH
        rest: list[BatchProgress] = []
        assert (
            await store.mark_orphans(
                tenant, batch_size=_BATCH, start_after=position, progress=_recorder(rest)
            )
            == 12 - _BATCH
        )
        # the resumed job reads only what lies after the position: nothing twice
        assert sum(r.examined or 0 for r in rest) == 12 - _BATCH
        counted = await store.count_items_by_status(tenant)
        assert counted["fields"]["orphaned"] == 7 and counted["assets"]["orphaned"] == 5

    async def test_mark_orphans_pages_through_derived_items_with_few_orphans(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        """Many derived items, few orphans spread among them: every batch examines at most
        the batch size (a batch marking fewer than the batch size does not end the job),
        every derived item is examined exactly once, every orphan is marked."""
        base = ts()
        profile = await new_profile(store, tenant)
        source = await store.update_field(
            tenant, profile.id, make_field("source", 1, collected_at=base)
        )
        orphans = {3, 8, 9, 17}  # of 19 derived fields; item ids are random: spread anyhow
        await self._derived(
            store,
            tenant,
            profile.id,
            base,
            fields_from=[uuid4() if number in orphans else source for number in range(19)],
            assets_from=[uuid4() if number == 4 else source for number in range(6)],
            asset_source_type=SourceType.PROFILE_FIELD,
        )
        reports: list[BatchProgress] = []
        assert (
            await store.mark_orphans(tenant, batch_size=_BATCH, progress=_recorder(reports))
            == len(orphans) + 1
        )
        assert len(reports) >= (19 + 6) // _BATCH
        assert all(r.examined is not None and r.examined <= _BATCH for r in reports)
        assert sum(r.examined or 0 for r in reports) == 19 + 6
        assert any(r.rows < _BATCH and not r.finished for r in reports)
        counted = await store.count_items_by_status(tenant)
        assert counted["fields"]["orphaned"] == len(orphans)
        assert counted["fields"]["active"] == 1 + 19 - len(orphans)
        assert counted["assets"]["active"] == 5 and counted["assets"]["orphaned"] == 1
        assert await store.mark_orphans(tenant, batch_size=_BATCH) == 0

    @pytest.mark.parametrize("bad", ["", "x" * 201, 5], ids=["empty", "too_long", "int"])
    async def test_mark_orphans_refuses_a_bad_resume_position_before_writing(
        self, store: ProfileStore, tenant: UUID, bad: object
    ) -> None:
        await self._orphans(store, tenant, ts())
        before = await snapshot(store, tenant)
        with pytest.raises(errors.ValidationError, match="start_after"):
            await store.mark_orphans(tenant, start_after=bad)  # type: ignore[arg-type]
        assert await snapshot(store, tenant) == before

    # ---------------------------------------------------------------- the status estimate

    async def test_the_status_estimate_of_a_small_tenant_is_the_exact_count(
        self, store: ProfileStore, tenant: UUID
    ) -> None:
        base = ts()
        await self._due_fields(store, tenant, base, count=3)
        await store.expire_stale_fields(tenant, max_batches=1, batch_size=2)
        await self._orphans(store, tenant, base)
        exact = await store.count_items_by_status(tenant)
        assert exact["fields"]["expired"] == 2 and exact["assets"]["active"] == 5
        assert await store.estimate_items_by_status(tenant) == exact

    # ---------------------------------------------------------------- bad input

    @pytest.mark.parametrize("bad", [0, -1, True, 100_001, 2.5, "5"], ids=repr)
    async def test_bulk_jobs_refuse_a_bad_batch_size_before_writing(
        self, store: ProfileStore, tenant: UUID, bad: object
    ) -> None:
        base = ts()
        await self._due_fields(store, tenant, base, count=1)
        before = await snapshot(store, tenant)
        with pytest.raises(errors.ValidationError, match="batch_size"):
            await store.expire_stale_fields(tenant, batch_size=bad)  # type: ignore[arg-type]
        with pytest.raises(errors.ValidationError, match="batch_size"):
            await store.mark_orphans(tenant, batch_size=bad)  # type: ignore[arg-type]
        with pytest.raises(errors.ValidationError, match="max_batches"):
            await store.expire_stale_fields(tenant, max_batches=0)
        assert await snapshot(store, tenant) == before
