"""Observability an SRE expects (issue 17): operation latency and errors per operation and
provider, cache bypass and Redis error counters, worker heartbeat and last sweep, process
metrics, bounded labels under client-chosen names, optional tenant labels, the shipped alert
rules and Grafana dashboard (every metric they query exists), and a real scrape that passes
``promtool check metrics`` — or, where promtool is not installed, prometheus_client's own
parser: the test id says which one ran (``[promtool]`` or ``[python-parser]``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import ccvault
from ccvault import errors, metrics
from ccvault.crypto import generate_key_entry
from ccvault.gapfill import _attempt
from ccvault.models import (
    Channel,
    GapFillSource,
    ProfileField,
    ProfileFieldDefinition,
    ScenarioFieldRequirement,
    Session,
    utcnow,
)
from ccvault.validation import SchemaValidationService
from ccvault.worker import Worker, lease_from_settings

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "ccvault.json"
PROMTOOL = shutil.which("promtool")
CHECKER = "promtool" if PROMTOOL else "python-parser"


def _sample(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _settings(**extra: Any) -> ccvault.VaultSettings:
    return ccvault.load_settings(
        store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False, **extra
    )


# ---------------------------------------------------------------------------------------
# the metric names the rules and the dashboard query
# ---------------------------------------------------------------------------------------

_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "le", "inf", "nan",
}  # fmt: skip
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, label matchers,
    grouping labels, durations and template variables left out)."""
    text = re.sub(r'"[^"]*"', "", expr)  # strings (label values, templates)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_WORDS or re.fullmatch(r"\d+\w*", word):
            continue
        names.add(word)
    return names


def _exposed_names() -> set[str]:
    """Every sample name the registry can expose (a labelled family with no sample yet
    counts with its type's suffixes)."""
    text = generate_latest(metrics.REGISTRY).decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def _rule_expressions() -> list[str]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def _dashboard_expressions() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in document["panels"] for t in panel.get("targets", [])]
    for variable in document["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(re.sub(r"label_values\(([^,]+),.*", r"\1", query["query"]))
    return exprs


def test_the_name_extraction_sees_what_it_should() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, operation) (rate(a_b_bucket{x="y"}[5m]))) '
        "/ clamp_min(sum(rate(c_total[1h])), 1e-9) > 0.5 and time() - max(d_seconds) > 1200"
    )
    assert _metric_names(expr) == {"a_b_bucket", "c_total", "d_seconds"}


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_queried_metric_exists_in_the_exposition(source: str) -> None:
    exprs = _rule_expressions() if source == "alerts" else _dashboard_expressions()
    assert exprs
    used = set().union(*(_metric_names(expr) for expr in exprs))
    assert used, "no metric name found"
    missing = sorted(used - _exposed_names())
    assert not missing, f"{source} query metrics that are not exposed: {missing}"


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    document = json.loads(DASHBOARD.read_text())
    assert document["uid"] and document["title"] == "ccvault"
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    for panel in document["panels"]:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])


@pytest.mark.parametrize("checker", [CHECKER])
def test_the_alert_rules_are_valid(checker: str, tmp_path: Path) -> None:
    if checker == "promtool":
        assert PROMTOOL is not None
        done = subprocess.run(
            [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        print(f"promtool check rules: {done.stdout.strip()}")
        return
    # no promtool: the same structure, checked here
    document = yaml.safe_load(ALERTS.read_text())
    names = set()
    for group in document["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert rule["alert"] not in names
            names.add(rule["alert"])
            assert re.fullmatch(r"\d+[smhd]", rule.get("for", "0s"))
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"]
            assert rule["expr"].count("(") == rule["expr"].count(")")
    print("python check of the alert rules (promtool not installed)")


# ---------------------------------------------------------------------------------------
# a real scrape under 200 client-chosen names
# ---------------------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[int]:
    server, _ = metrics.serve("127.0.0.1", 0)
    try:
        yield server.server_port
    finally:
        server.shutdown()


async def _invent_names(tenant: uuid.UUID, agent: uuid.UUID) -> None:
    async with ccvault.open_store(_settings(validation_strict=True)) as store:
        await store.save_field_definition(
            ProfileFieldDefinition(
                tenant_id=tenant, agent_id=agent, name="age", value_type="number"
            )
        )
        validator = SchemaValidationService(store, strict=True)
        for index in range(200):  # a client inventing field names
            problems = await validator.check(
                tenant, agent, ProfileField(name=f"made_up_{index}", value="x")
            )
            assert problems
        assert await validator.check(tenant, agent, ProfileField(name="age", value="old"))
        session = Session(tenant_id=tenant, agent_id=agent, customer_profile_id=uuid.uuid4())
        for _ in range(200):  # ... and scenario ids
            _attempt(session, uuid.uuid4(), GapFillSource.SESSION)


@pytest.mark.parametrize("checker", [CHECKER])
def test_a_scrape_under_200_invented_names_is_bounded_and_valid(checker: str, served: int) -> None:
    tenant, agent = uuid.uuid4(), uuid.uuid4()
    asyncio.run(_invent_names(tenant, agent))
    text = httpx.get(f"http://127.0.0.1:{served}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    fields = {
        s.labels["field_name"]
        for s in families["profile_schema_validation_errors"].samples
        if s.labels.get("tenant_id") == str(tenant) and s.name.endswith("_total")
    }
    assert fields == {"age", metrics.UNDEFINED_FIELD}  # no invented name is a label value
    scenarios = {
        s.labels["scenario_id"]
        for s in families["gap_fill_attempts"].samples
        if s.labels.get("tenant_id") == str(tenant) and s.name.endswith("_total")
    }
    assert len(scenarios) == metrics.MAX_SCENARIO_LABELS + 1 and metrics.OTHER in scenarios
    if checker == "promtool":
        assert PROMTOOL is not None
        done = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        print("promtool check metrics: ok")
    else:
        assert families  # parsed by prometheus_client's exposition parser
        print("prometheus_client parser check of the exposition (promtool not installed)")
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= set(families)


# ---------------------------------------------------------------------------------------
# the metrics are fed by real events
# ---------------------------------------------------------------------------------------


async def test_every_public_operation_is_timed_and_its_errors_counted() -> None:
    tenant = uuid.uuid4()
    labels = {"operation": "get_or_create", "provider": "inmemory"}
    before = _sample("ccvault_operation_duration_seconds_count", labels)
    failed = {"operation": "update_field", "provider": "inmemory", "error_type": "NotFoundError"}
    errors_before = _sample("ccvault_operation_errors_total", failed)
    async with ccvault.open_store(_settings()) as store:
        await store.get_or_create(tenant, Channel.WEB, "visitor")
        with pytest.raises(errors.NotFoundError):
            await store.update_field(tenant, uuid.uuid4(), ProfileField(name="a", value=1))
    assert _sample("ccvault_operation_duration_seconds_count", labels) == before + 1
    assert _sample("ccvault_operation_errors_total", failed) == errors_before + 1
    # timed once per call, at the outermost store, whatever the wrappers
    settings = ccvault.load_settings(
        store_provider="inmemory",
        cache_enabled=False,
        auto_encrypt_pii=True,
        pii_encryption_key_id=generate_key_entry("k1"),
    )
    before = _sample("ccvault_operation_duration_seconds_count", labels)
    async with ccvault.open_store(settings) as store:
        await store.get_or_create(tenant, Channel.WEB, "visitor-2")
    assert _sample("ccvault_operation_duration_seconds_count", labels) == before + 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_cache_bypass_and_redis_errors_are_counted() -> None:
    settings = ccvault.load_settings(
        store_provider="inmemory",
        cache_enabled=True,
        auto_encrypt_pii=False,
        redis={"url": f"redis://127.0.0.1:{_closed_port()}/0", "retry_after_seconds": 600},
    )
    errors_before = sum(
        _sample("ccvault_redis_errors_total", {"error_type": kind})
        for kind in ("ConnectionError", "TimeoutError")
    )
    bypass_before = _sample("ccvault_cache_bypass_total", {"reason": "redis_down"})
    tenant = uuid.uuid4()
    async with ccvault.open_store(settings) as store:
        profile = await store.get_or_create(tenant, Channel.WEB, "visitor")
        for _ in range(3):
            assert await store.get_by_id(tenant, profile.id) is not None
    errors_after = sum(
        _sample("ccvault_redis_errors_total", {"error_type": kind})
        for kind in ("ConnectionError", "TimeoutError")
    )
    assert errors_after > errors_before
    assert _sample("ccvault_cache_bypass_total", {"reason": "redis_down"}) >= bypass_before + 2


async def test_the_worker_beats_and_stamps_its_sweeps(tmp_path: Path) -> None:
    settings = _settings(worker={"lease": "file", "lease_dir": str(tmp_path)})
    started = time.time()
    async with ccvault.open_store(settings) as store:
        await store.get_or_create(uuid.uuid4(), Channel.WEB, "visitor")
        lease = lease_from_settings(settings)
        try:
            await Worker(store, settings, lease).run_once()
        finally:
            await lease.aclose()
    assert _sample("ccvault_worker_heartbeat_timestamp_seconds", {}) >= int(started)
    assert _sample("ccvault_worker_last_sweep_timestamp_seconds", {}) >= int(started)


def test_tenant_labels_can_be_turned_off_and_process_metrics_too() -> None:
    tenant = str(uuid.uuid4())
    try:
        metrics.configure(tenant_labels=False, process_metrics=False)
        metrics.PROFILE_CACHE_HITS.labels(tenant_id=tenant).inc()
        metrics.SCHEMA_VALIDATION_ERRORS.labels(
            tenant_id=tenant, field_name="x", error_type="type"
        ).inc()
        text = generate_latest(metrics.REGISTRY).decode()
        assert tenant not in text and 'tenant_id="_all"' in text
        assert "process_cpu_seconds_total" not in text
    finally:
        metrics.configure(tenant_labels=True, process_metrics=True)
    assert "process_cpu_seconds_total" in generate_latest(metrics.REGISTRY).decode()


async def test_status_series_of_a_tenant_gone_are_dropped() -> None:
    tenant = uuid.uuid4()
    async with ccvault.open_store(_settings()) as store:
        profile = await store.get_or_create(tenant, Channel.WEB, "visitor")
        await store.update_field(tenant, profile.id, ProfileField(name="a", value=1))
        await metrics.refresh_status_gauge(store, tenant)
        active = {"tenant_id": str(tenant), "status": "active"}
        assert _sample("profile_fields_by_status", active) == 1
        metrics.forget_tenants([])
        assert metrics.REGISTRY.get_sample_value("profile_fields_by_status", active) is None


async def test_a_stale_field_warns_once_per_tenant_and_field(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenant, agent, scenario = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with ccvault.open_store(_settings(freshness={"stale_field_action": "warn"})) as store:
        await store.save_field_definition(
            ProfileFieldDefinition(
                tenant_id=tenant, agent_id=agent, name="city", freshness_seconds=60
            )
        )
        await store.save_scenario_requirement(
            ScenarioFieldRequirement(
                tenant_id=tenant, agent_id=agent, scenario_id=scenario, field_name="city"
            )
        )
        profile = await store.get_or_create(tenant, Channel.WEB, "visitor")
        await store.update_field(
            tenant,
            profile.id,
            ProfileField(name="city", value="Delft", collected_at=utcnow() - timedelta(hours=1)),
        )
        current = await store.get_by_id(tenant, profile.id)
        assert current is not None
        with caplog.at_level(logging.DEBUG, logger="ccvault.requirements"):
            for _ in range(5):
                assert await store.get_missing_fields(tenant, current, scenario) == []
    stale = [r for r in caplog.records if "is stale" in r.getMessage()]
    assert [r.levelno for r in stale] == [logging.WARNING] + [logging.DEBUG] * 4
    counted = _sample(
        "profile_stale_field_warnings_total", {"tenant_id": str(tenant), "field_name": "city"}
    )
    assert counted == 5  # the counter still counts every one
