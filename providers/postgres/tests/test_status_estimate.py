"""Issue 17: the status gauge's count is cheap: ``estimate_items_by_status`` counts a small
table exactly and samples a bounded number of pages of a large one (TABLESAMPLE SYSTEM),
so the worker's refresh every sweep never counts a large table in full."""

from __future__ import annotations

import uuid

from ccvault.models import Channel, ProfileField
from ccvault_postgres import PostgresProfileStore

from .conftest import StoreFactory
from .test_expire_batches import _BASE, _ROWS, _load_due_tenant


async def _pages(store: PostgresProfileStore) -> int:
    async with store.connection() as conn:
        return int(
            await conn.fetchval(
                "SELECT pg_relation_size('profile_fields'::regclass) / "
                "current_setting('block_size')::bigint"
            )
        )


async def test_a_small_table_is_counted_exactly(make_store: StoreFactory) -> None:
    store = await make_store()
    tenant = uuid.uuid4()
    profile = await store.get_or_create(tenant, Channel.WHATSAPP, "+15550001111")
    for number in range(3):
        await store.update_field(
            tenant, profile.id, ProfileField(name="score", value=number, collected_at=_BASE)
        )
    assert store.status_sample_pages >= await _pages(store)  # small: below the sample size
    estimate = await store.estimate_items_by_status(tenant)
    assert estimate == await store.count_items_by_status(tenant)
    assert estimate["fields"]["active"] == 1 and estimate["fields"]["superseded"] == 2


async def test_a_large_table_is_estimated_from_a_bounded_page_sample(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    store.now = lambda: _BASE  # type: ignore[method-assign]
    tenant = uuid.uuid4()
    await _load_due_tenant(store, tenant)
    await store.expire_stale_fields(tenant, batch_size=5_000, max_batches=2)
    pages = await _pages(store)
    store.status_sample_pages = pages // 2  # "large": the estimate reads about half of it
    exact = await store.count_items_by_status(tenant)
    assert exact["fields"]["expired"] == 10_000 and exact["fields"]["active"] == _ROWS - 10_000
    estimate = await store.estimate_items_by_status(tenant)
    # half of ~pages pages sampled: each status within 30% of the truth (the sampling error
    # of a fraction of about 0.5 over ~pages/2 pages is a few percent)
    for status in ("expired", "active"):
        assert (
            abs(estimate["fields"][status] - exact["fields"][status])
            <= 0.3 * exact["fields"][status]
        ), (status, estimate, exact)
    assert estimate["fields"]["superseded"] == 0 and estimate["assets"]["active"] == 0
