"""Issue 12: label values a client chooses (scenario ids, field names) cannot grow the number
of series without bound: 20,000 scenario ids must not make 20,000 series."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest

from ccvault import load_settings, metrics, open_store
from ccvault.gapfill import GapFillService
from ccvault.models import Channel, Session
from ccvault.store import ProfileStore


@pytest.fixture
async def store() -> AsyncIterator[ProfileStore]:
    settings = load_settings(store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False)
    async with open_store(settings) as opened:
        yield opened


def _series(name: str, tenant: str) -> int:
    count = 0
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels.get("tenant_id") == tenant:
                count += 1
    return count


def test_twenty_thousand_scenario_ids_make_a_bounded_number_of_series() -> None:
    tenant = str(uuid4())
    for _ in range(20_000):
        scenario = str(uuid4())
        metrics.GAP_FILL_ATTEMPTS.labels(
            tenant_id=tenant, scenario_id=scenario, source="profile"
        ).inc()
        metrics.GAP_FILL_SUCCESS_RATE.labels(tenant_id=tenant, scenario_id=scenario).set(1)
    assert _series("gap_fill_attempts_total", tenant) == metrics.MAX_SCENARIO_LABELS + 1
    assert _series("gap_fill_success_rate", tenant) == metrics.MAX_SCENARIO_LABELS + 1
    # every attempt is still counted: the ones beyond the bound under "_other"
    other = metrics.REGISTRY.get_sample_value(
        "gap_fill_attempts_total",
        {"tenant_id": tenant, "scenario_id": metrics.OTHER, "source": "profile"},
    )
    assert other == 20_000 - metrics.MAX_SCENARIO_LABELS


def test_field_names_are_bounded_per_tenant() -> None:
    tenant = str(uuid4())
    for index in range(5_000):
        metrics.SCHEMA_VALIDATION_ERRORS.labels(
            tenant_id=tenant, field_name=f"f{index}", error_type="type"
        ).inc()
        metrics.STALE_FIELD_WARNINGS.labels(tenant_id=tenant, field_name=f"f{index}").inc()
    assert (
        _series("profile_schema_validation_errors_total", tenant)
        == metrics.MAX_FIELD_NAME_LABELS + 1
    )
    assert (
        _series("profile_stale_field_warnings_total", tenant) == metrics.MAX_FIELD_NAME_LABELS + 1
    )
    # another tenant has its own bound: its first names are kept as they are
    fresh = str(uuid4())
    assert metrics.field_name_label(fresh, "email") == "email"
    assert metrics.scenario_label(fresh, "s1") == "s1"


async def test_gap_fill_with_many_scenarios_stays_bounded(store: ProfileStore) -> None:
    tenant, agent = uuid4(), uuid4()
    profile = await store.get_or_create(tenant, Channel.WEB, "visitor")
    service = GapFillService(store)
    session = Session(tenant_id=tenant, agent_id=agent, customer_profile_id=profile.id)
    for _ in range(3 * metrics.MAX_SCENARIO_LABELS):
        await service.fill_gap("email", session, scenario_id=uuid4())
    for name in ("gap_fill_attempts_total", "gap_fill_success_rate"):
        assert _series(name, str(tenant)) <= 3 * (metrics.MAX_SCENARIO_LABELS + 1)
