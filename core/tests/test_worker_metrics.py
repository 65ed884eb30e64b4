"""All nine metrics, fed by real events through the composed stack, scraped over HTTP.

The stack is the one ``ccvault.open_store`` builds (in-memory provider, the real Redis
cache, encryption); the events are ordinary calls of the store, the validation and gap-fill
services and the worker. The endpoint is ``ccvault.metrics.serve``, the same server
``ccvault metrics`` and ``ccvault worker`` run.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

import ccvault
from ccvault import metrics
from ccvault.crypto import generate_key_entry
from ccvault.gapfill import EnhancedGapFillService
from ccvault.models import (
    Channel,
    FieldValueType,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
    Session,
    SourceType,
    utcnow,
)
from ccvault.validation import SchemaValidationService
from ccvault.worker import RedisTenantLease, Worker

REDIS_URL = "redis://127.0.0.1:6379/0"
NINE = {
    "profile_cache_hits": "counter",
    "profile_cache_misses": "counter",
    "profile_cache_invalidations": "counter",
    "profile_derivation_chain_depth": "histogram",
    "profile_schema_validation_errors": "counter",
    "profile_fields_by_status": "gauge",
    "gap_fill_attempts": "counter",
    "gap_fill_success_rate": "gauge",
    "profile_stale_field_warnings": "counter",
}


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    value = f"test-metrics-{uuid.uuid4().hex}:"
    yield value
    client = Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{value}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_all_nine_metrics_are_fed_by_real_events_and_served(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", generate_key_entry("k1"))
    settings = ccvault.load_settings(
        store_provider="inmemory",
        cache_enabled=True,
        auto_encrypt_pii=True,
        redis={"url": REDIS_URL, "key_prefix": prefix},
        freshness={"stale_field_action": "warn"},
    )
    tenant, agent, scenario = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    server, _ = metrics.serve("127.0.0.1", 0)
    try:
        async with ccvault.open_store(settings) as store:
            # cache: a miss, then hits, then an invalidating write
            profile = await store.get_or_create(tenant, Channel.WEB, "visitor-1")
            for _ in range(3):
                assert await store.get_by_id(tenant, profile.id) is not None
                assert await store.get_by_customer_id(tenant, profile.customer_id) is not None
            root = ProfileField(
                name="id_scan_text", value="P<NLD", source_item_type=SourceType.TOOL
            )
            await store.update_field(tenant, profile.id, root)
            derived = ProfileField(
                name="nationality",
                value="NL",
                source_item_id=root.id,
                source_item_type=SourceType.PROFILE_FIELD,
            )
            await store.update_field(tenant, profile.id, derived)
            # lineage
            assert len(await store.get_derivation_chain(tenant, derived.id, "profile_field")) == 2
            # validation
            await store.save_field_definition(
                ProfileFieldDefinition(
                    tenant_id=tenant, agent_id=agent, name="age", value_type=FieldValueType.NUMBER
                )
            )
            validator = SchemaValidationService.from_settings(store, settings)
            assert await validator.check(tenant, agent, ProfileField(name="age", value="old"))
            # a stale field let through with a warning
            await store.save_field_definition(
                ProfileFieldDefinition(
                    tenant_id=tenant, agent_id=agent, name="city", freshness_seconds=60
                )
            )
            await store.update_field(
                tenant,
                profile.id,
                ProfileField(
                    name="city", value="Delft", collected_at=utcnow() - timedelta(hours=1)
                ),
            )
            for name in ("city", "email"):
                await store.save_scenario_requirement(
                    ScenarioFieldRequirement(
                        tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name=name
                    )
                )
            current = await store.get_by_id(tenant, profile.id)
            assert current is not None
            missing = await store.get_missing_fields(tenant, current, scenario)
            assert [r.field_name for r in missing] == ["email"]
            # gap fill from the session's variables
            session = Session(
                tenant_id=tenant,
                agent_id=agent,
                customer_profile_id=profile.id,
                variables={"email": "visitor@example.com"},
            )
            results = await EnhancedGapFillService.from_settings(
                store, settings
            ).fill_scenario_requirements(session, scenario)
            assert results["email"].filled
            # the worker refreshes the status gauge
            lease = RedisTenantLease.from_settings(settings)
            try:
                await Worker(store, settings, lease, tenant_ids=[tenant]).run_once()
            finally:
                await lease.aclose()

        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{server.server_port}/metrics")
        assert response.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
    finally:
        server.shutdown()

    for name, kind in NINE.items():
        assert name in families, f"{name} is not served"
        family = families[name]
        assert family.type == kind
        ours = [s for s in family.samples if s.labels.get("tenant_id") == str(tenant)]
        assert ours, f"{name} has no sample for the tenant: never fed"
        if kind == "counter":
            assert sum(s.value for s in ours if s.name.endswith("_total")) > 0, name
        if kind == "histogram":
            assert [s.value for s in ours if s.name.endswith("_count")] == [1.0]
    active = [
        s.value
        for s in families["profile_fields_by_status"].samples
        if s.labels == {"tenant_id": str(tenant), "status": "active"}
    ]
    assert active == [4.0]  # id_scan_text, nationality, city, email
    rate = families["gap_fill_success_rate"].samples
    assert any(s.labels.get("scenario_id") == str(scenario) and s.value == 1.0 for s in rate)
