"""OpenTelemetry tracing (issue 17, the ``otel`` extra): one span ``ccvault.<operation>`` per
public store call, through the in-memory provider alone and through the deployed stack
(Redis cache, then PII encryption), errors recorded by type, no personal data in any span;
off by default, and then nothing of OpenTelemetry is imported or wrapped.

Spans are collected with the SDK's ``InMemorySpanExporter``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from redis.asyncio import Redis

import ccvault
from ccvault import errors, tracing
from ccvault.cache import CachedProfileStore
from ccvault.crypto import EncryptedProfileStore, generate_key_entry
from ccvault.models import (
    Channel,
    ChannelIdentity,
    CustomerProfile,
    ProfileField,
    ProfileFieldDefinition,
)
from ccvault.store import ProfileStore

REDIS_URL = "redis://127.0.0.1:6379/0"
# personal data the calls carry: none of it may appear anywhere in a span
PHONE = "+4915112345678"
SECRET_VALUE = "Alice Example, 221B Baker Street"
FIELD_NAME = "home_address"
ALLOWED_ATTRIBUTES = {"ccvault.operation", "ccvault.provider", "ccvault.outcome", "error.type"}

_EXPORTER = InMemorySpanExporter()


def _provider() -> TracerProvider:
    """The process's SDK tracer provider, exporting into :data:`_EXPORTER` (set once)."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
        current = trace.get_tracer_provider()
        assert isinstance(current, TracerProvider)
    if not getattr(current, "_ccvault_test_exporter", False):
        current.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        current._ccvault_test_exporter = True  # type: ignore[attr-defined]
    return current


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test (through open_store's settings), off and unwrapped after."""
    _provider()
    _EXPORTER.clear()
    try:
        yield _EXPORTER
    finally:
        tracing.configure(enabled=False)
        _EXPORTER.clear()


def _settings(**extra: Any) -> ccvault.VaultSettings:
    options: dict[str, Any] = {
        "store_provider": "inmemory",
        "cache_enabled": False,
        "auto_encrypt_pii": False,
        "tracing": {"enabled": True},
    }
    options.update(extra)
    return ccvault.load_settings(**options)


def _profile(tenant: uuid.UUID) -> CustomerProfile:
    return CustomerProfile(
        tenant_id=tenant,
        channel_identities=[ChannelIdentity(channel=Channel.WHATSAPP, channel_user_id=PHONE)],
        fields={FIELD_NAME: ProfileField(name=FIELD_NAME, value=SECRET_VALUE)},
    )


async def _calls(store: ProfileStore, tenant: uuid.UUID) -> list[str]:
    """A few public operations carrying personal data; the operation names, in order."""
    profile = _profile(tenant)
    await store.save_field_definition(
        ProfileFieldDefinition(
            tenant_id=tenant, agent_id=uuid.uuid4(), name=FIELD_NAME, is_pii=True
        )
    )
    await store.save(profile)
    found = await store.get_by_channel_identity(tenant, Channel.WHATSAPP, PHONE)
    assert found is not None and found.fields[FIELD_NAME].value == SECRET_VALUE
    await store.update_field(tenant, profile.id, ProfileField(name=FIELD_NAME, value=SECRET_VALUE))
    field = await store.get_field(tenant, profile.id, FIELD_NAME)
    assert field is not None and field.value == SECRET_VALUE
    return [
        "save_field_definition",
        "save",
        "get_by_channel_identity",
        "update_field",
        "get_field",
    ]


def _is_ccvault(span: ReadableSpan) -> bool:
    return span.name.startswith("ccvault.")


def _top_level(finished: list[ReadableSpan]) -> list[ReadableSpan]:
    """The spans of the test's own calls (not nested inside another ccvault span)."""
    ids = {span.context.span_id for span in finished if _is_ccvault(span)}
    return [
        span
        for span in finished
        if _is_ccvault(span) and (span.parent is None or span.parent.span_id not in ids)
    ]


def _span_text(span: ReadableSpan) -> str:
    """Everything a span would export: name, attributes, status, events, links."""
    return json.dumps(
        {
            "name": span.name,
            "attributes": dict(span.attributes or {}),
            "status": [span.status.status_code.name, span.status.description],
            "events": [[e.name, dict(e.attributes or {})] for e in span.events],
            "links": [dict(link.attributes or {}) for link in span.links],
            "resource": dict(span.resource.attributes),
        },
        default=str,
    )


def _assert_no_personal_data(finished: list[ReadableSpan], tenant: uuid.UUID) -> None:
    assert finished
    for span in finished:
        text = _span_text(span)
        for secret in (PHONE, SECRET_VALUE, FIELD_NAME, str(tenant)):
            assert secret not in text, f"{span.name} carries personal data: {text}"
        assert set(span.attributes or {}) <= ALLOWED_ATTRIBUTES


async def test_one_span_per_operation_through_inmemory(spans: InMemorySpanExporter) -> None:
    tenant = uuid.uuid4()
    async with ccvault.open_store(_settings()) as store:
        expected = await _calls(store, tenant)
    assert tracing.enabled()
    finished = list(spans.get_finished_spans())
    top = _top_level(finished)
    assert [span.name for span in top] == [f"ccvault.{name}" for name in expected]
    for span, name in zip(top, expected, strict=True):
        assert dict(span.attributes or {}) == {
            "ccvault.operation": name,
            "ccvault.provider": "inmemory",
            "ccvault.outcome": "ok",
        }
        assert span.status.status_code is StatusCode.UNSET
        assert span.kind is trace.SpanKind.INTERNAL
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "ccvault"
    _assert_no_personal_data(finished, tenant)


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"ccvault-test:{uuid.uuid4().hex}:"
    yield prefix
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_one_span_per_public_call_through_cache_and_encryption(
    spans: InMemorySpanExporter, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", generate_key_entry("k1"))
    settings = _settings(
        cache_enabled=True,
        auto_encrypt_pii=True,
        redis={"url": REDIS_URL, "key_prefix": redis_prefix},
    )
    tenant = uuid.uuid4()
    async with ccvault.open_store(settings) as store:
        assert isinstance(store, EncryptedProfileStore)
        assert isinstance(store.inner, CachedProfileStore)
        expected = await _calls(store, tenant)
        finished = list(spans.get_finished_spans())
        spans.clear()
        # read twice: the second is served by the cache, still exactly one span each
        profile = await store.get_by_channel_identity(tenant, Channel.WHATSAPP, PHONE)
        assert profile is not None
        for _ in range(2):
            await store.get_field(tenant, profile.id, FIELD_NAME)
        reads = list(spans.get_finished_spans())
    top = _top_level(finished)
    # one span per public call, not one per layer (encryption -> cache -> provider)
    assert [span.name for span in top] == [f"ccvault.{name}" for name in expected]
    assert [span.name for span in _top_level(reads)] == [
        "ccvault.get_by_channel_identity",
        "ccvault.get_field",
        "ccvault.get_field",
    ]
    everything = finished + reads
    assert {(s.attributes or {}).get("ccvault.provider") for s in everything} == {"inmemory"}
    by_id = {span.context.span_id: span for span in everything}
    for span in everything:
        parent = by_id.get(span.parent.span_id) if span.parent else None
        assert parent is None or parent.name != span.name, "the same operation nested"
    _assert_no_personal_data(everything, tenant)


async def test_failing_call_records_the_error_type_only(spans: InMemorySpanExporter) -> None:
    tenant = uuid.uuid4()
    missing = uuid.uuid4()
    async with ccvault.open_store(_settings()) as store:
        with pytest.raises(errors.NotFoundError):
            await store.update_field(
                tenant, missing, ProfileField(name=FIELD_NAME, value=SECRET_VALUE)
            )
        with pytest.raises(errors.ValidationError):
            await store.get_by_id(tenant, "not-a-uuid")  # type: ignore[arg-type]
    top = _top_level(list(spans.get_finished_spans()))
    assert [span.name for span in top] == ["ccvault.update_field", "ccvault.get_by_id"]
    for span, error_type in zip(top, ["NotFoundError", "ValidationError"], strict=True):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == error_type
        assert (span.attributes or {})["error.type"] == error_type
        assert (span.attributes or {})["ccvault.outcome"] == "error"
        assert span.events == ()  # no exception event: its message and traceback stay out
    _assert_no_personal_data(top, tenant)
    assert str(missing) not in "".join(_span_text(span) for span in top)


async def test_tenant_id_only_when_the_setting_allows(spans: InMemorySpanExporter) -> None:
    tenant = uuid.uuid4()
    async with ccvault.open_store(_settings(tracing={"enabled": True})) as store:
        await store.list_profile_ids(tenant)
    async with ccvault.open_store(
        _settings(tracing={"enabled": True, "tenant_ids": True})
    ) as store:
        await store.list_profile_ids(tenant)
    without, with_tenant = _top_level(list(spans.get_finished_spans()))
    assert "ccvault.tenant_id" not in (without.attributes or {})
    assert (with_tenant.attributes or {})["ccvault.tenant_id"] == str(tenant)


async def test_turned_off_unwraps_the_operations(spans: InMemorySpanExporter) -> None:
    original = ProfileStore.get_by_id
    tracing.configure(enabled=True)
    assert getattr(ProfileStore.get_by_id, "__ccvault_traced__", False)
    tracing.configure(enabled=True)  # idempotent: wrapped once
    assert ProfileStore.get_by_id.__wrapped__ is original  # type: ignore[attr-defined]
    tracing.configure(enabled=False)
    assert ProfileStore.get_by_id is original
    async with ccvault.open_store(_settings(tracing={"enabled": False})) as store:
        await store.list_profile_ids(uuid.uuid4())
    assert not tracing.enabled()
    assert spans.get_finished_spans() == ()


def test_without_the_extra_enabling_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(errors.MissingExtraError, match=r"pip install 'ccvault\[otel\]'"):
        tracing.configure(enabled=True)
    assert not tracing.enabled()


def test_disabled_path_imports_no_opentelemetry() -> None:
    """In a fresh interpreter, a store used with tracing off (the default) never imports
    OpenTelemetry and its operations are the unwrapped methods."""
    # redis-py 7 imports OpenTelemetry for its own observability whenever redis is loaded,
    # so the check runs as a deployment without the cache extra (no redis at all)
    code = """
import asyncio, sys, uuid
sys.modules["redis"] = None
import ccvault
from ccvault.store import ProfileStore

async def main():
    settings = ccvault.load_settings(
        store_provider="inmemory", cache_enabled=False, auto_encrypt_pii=False
    )
    assert settings.tracing.enabled is False
    async with ccvault.open_store(settings) as store:
        await store.list_profile_ids(uuid.uuid4())

asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
assert not loaded, loaded
assert not getattr(ProfileStore.get_by_id, "__ccvault_traced__", False)
print("no opentelemetry")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no opentelemetry"
