"""The vault's Prometheus metrics (the seed's section 6), defined once and fed by real events.

Every metric lives in :data:`REGISTRY`, the vault's own collector registry, so an embedding
application can expose it beside its own or serve it alone (``ccvault metrics``).

Label values a client chooses — scenario ids, field names — are bounded per tenant: the
first :data:`MAX_SCENARIO_LABELS` scenario ids and :data:`MAX_FIELD_NAME_LABELS` field names
a process sees for a tenant keep their own series; any further one is counted under the value
``"_other"``. So no client can grow the number of series (and the scrape) without bound;
tenant ids are provisioned by the operator, and every other label takes a fixed set of values.
With ``[metrics] tenant_labels = false`` (:func:`configure`) every ``tenant_id`` label is
``"_all"``: one series per metric whatever the number of tenants. Field names reach a label
only from stored definitions (a field without one counts under ``"_undefined"``).

Beyond the seed's metrics: ``ccvault_operation_duration_seconds{operation, provider}`` (every
public store operation, :func:`instrument_operations`), ``ccvault_operation_errors_total``
by error type, ``ccvault_cache_bypass_total`` and ``ccvault_redis_errors_total``, the worker's
heartbeat and last-sweep timestamps, gap fill's tried/filled counters (a success ratio is
``filled / tried`` in PromQL, across replicas), and the process and platform collectors.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from uuid import UUID

# prometheus-client, or no-ops without the ``metrics`` extra (the store calls these always)
from ccvault._prometheus import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    MetricWrapperBase,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

if TYPE_CHECKING:
    from threading import Thread
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "ALL_TENANTS",
    "CACHE_BYPASSES",
    "CACHE_OVERSIZED",
    "DERIVATION_CHAIN_DEPTH",
    "FIELD_STATUS_GAUGE",
    "GAP_FILL_ATTEMPTS",
    "GAP_FILL_FIELDS_FILLED",
    "GAP_FILL_FIELDS_TRIED",
    "GAP_FILL_SUCCESS_RATE",
    "MAX_FIELD_NAME_LABELS",
    "MAX_SCENARIO_LABELS",
    "OPERATION_DURATION",
    "OPERATION_ERRORS",
    "OTHER",
    "PROFILE_CACHE_HITS",
    "PROFILE_CACHE_INVALIDATIONS",
    "PROFILE_CACHE_MISSES",
    "REDIS_ERRORS",
    "REGISTRY",
    "SCHEMA_VALIDATION_ERRORS",
    "STALE_FIELD_WARNINGS",
    "UNDEFINED_FIELD",
    "WORKER_BATCHES",
    "WORKER_BATCH_ROWS",
    "WORKER_HEARTBEAT",
    "WORKER_LAST_SWEEP",
    "WORKER_TENANT_FAILURES",
    "ItemCounter",
    "configure",
    "field_name_label",
    "forget_tenants",
    "instrument_operations",
    "refresh_status_gauge",
    "scenario_label",
    "serve",
    "tenant_label",
]

REGISTRY = CollectorRegistry(auto_describe=True)

#: Distinct scenario ids per tenant with a series of their own (then ``"_other"``).
MAX_SCENARIO_LABELS = 100
#: Distinct field names per tenant with a series of their own (then ``"_other"``).
MAX_FIELD_NAME_LABELS = 200
#: The label value shared by every client-chosen value beyond the bound.
OTHER = "_other"
#: The ``tenant_id`` label value of every tenant when tenant labels are off.
ALL_TENANTS = "_all"
#: The ``field_name`` label value of a field that has no stored definition.
UNDEFINED_FIELD = "_undefined"

_options = {"tenant_labels": True}


def tenant_label(tenant_id: object) -> str:
    """The ``tenant_id`` label value: the id, or ``"_all"`` when tenant labels are off."""
    return str(tenant_id) if _options["tenant_labels"] else ALL_TENANTS


_M = TypeVar("_M", bound=MetricWrapperBase)


class _BoundedValues:
    """Per tenant, the first ``limit`` distinct values pass; later ones become ``OTHER``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def __call__(self, tenant_id: str, value: str) -> str:
        with self._lock:
            seen = self._seen.setdefault(tenant_id, set())
            if value in seen:
                return value
            if len(seen) < self.limit and value != OTHER:
                seen.add(value)
                return value
            return OTHER


_SCENARIOS = _BoundedValues(MAX_SCENARIO_LABELS)
_FIELD_NAMES = _BoundedValues(MAX_FIELD_NAME_LABELS)


def scenario_label(tenant_id: object, scenario_id: object) -> str:
    """The ``scenario_id`` label value of a scenario (``"_other"`` beyond the bound)."""
    return _SCENARIOS(str(tenant_id), str(scenario_id))


def field_name_label(tenant_id: object, field_name: object) -> str:
    """The ``field_name`` label value of a field name (``"_other"`` beyond the bound)."""
    return _FIELD_NAMES(str(tenant_id), str(field_name))


class _Bounded(Generic[_M]):
    """A metric whose client-chosen labels go through their per-tenant bound; everything
    else is the metric itself."""

    def __init__(self, metric: _M, bounds: dict[str, _BoundedValues]) -> None:
        self.metric = metric
        self._bounds = bounds

    def labels(self, **labels: object) -> _M:
        tenant = str(labels.get("tenant_id"))
        for name, bound in self._bounds.items():
            if name in labels:
                labels[name] = bound(tenant, str(labels[name]))
        if "tenant_id" in labels:
            labels["tenant_id"] = tenant_label(tenant)
        return self.metric.labels(**labels)

    def __getattr__(self, name: str) -> object:
        return getattr(self.metric, name)


# Cache metrics
PROFILE_CACHE_HITS = _Bounded(
    Counter(
        "profile_cache_hits_total", "Profile cache hit count", ["tenant_id"], registry=REGISTRY
    ),
    {},
)
PROFILE_CACHE_MISSES = _Bounded(
    Counter(
        "profile_cache_misses_total", "Profile cache miss count", ["tenant_id"], registry=REGISTRY
    ),
    {},
)
PROFILE_CACHE_INVALIDATIONS = _Bounded(
    Counter(
        "profile_cache_invalidations_total",
        "Profile cache invalidation count",
        ["tenant_id", "reason"],
        registry=REGISTRY,
    ),
    {},
)
CACHE_BYPASSES = Counter(
    "ccvault_cache_bypass_total",
    "Cache reads and writes sent to the store because Redis failed recently",
    ["reason"],
    registry=REGISTRY,
)
CACHE_OVERSIZED = Counter(
    "ccvault_cache_oversized_total",
    "Entries served from the store but not cached: larger than the cache's own limit",
    ["kind"],
    registry=REGISTRY,
)
CACHE_NEAR_HITS = Counter(
    "ccvault_cache_near_hits_total",
    "Profile cache hits served from the process's near tier, by how the copy was trusted: "
    "pushed (no Redis round trip, near_cache_invalidation = push) or checked (one GET of the "
    "tenant's generation)",
    ["check"],
    registry=REGISTRY,
)
CACHE_TRACKING_UP = Gauge(
    "ccvault_cache_tracking_up",
    "Open caches of this process whose pushed invalidations are healthy "
    "(near_cache_invalidation = push): their near copies are served without a GET",
    registry=REGISTRY,
)
CACHE_TRACKING_WANTED = Gauge(
    "ccvault_cache_tracking_wanted",
    "Open caches of this process in push mode (near_cache_invalidation = push, a near "
    "tier): ccvault_cache_tracking_up below it means near copies are checked by a GET",
    registry=REGISTRY,
)
CACHE_TRACKING_LOST = Counter(
    "ccvault_cache_tracking_lost_total",
    "Healthy pushed-invalidation sessions that ended other than by closing the cache (a "
    "dropped connection, a failover, SWAPDB): near copies are checked by a GET until one "
    "is back",
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "ccvault_redis_errors_total",
    "Redis calls of the cache that failed, by error type (AuthenticationError: wrong password)",
    ["error_type"],
    registry=REGISTRY,
)

# Lineage metrics
DERIVATION_CHAIN_DEPTH = _Bounded(
    Histogram(
        "profile_derivation_chain_depth",
        "Depth of derivation chains traversed",
        ["tenant_id"],
        buckets=[1, 2, 3, 5, 10, 20],
        registry=REGISTRY,
    ),
    {},
)

# Schema metrics
SCHEMA_VALIDATION_ERRORS = _Bounded(
    Counter(
        "profile_schema_validation_errors_total",
        "Schema validation error count",
        ["tenant_id", "field_name", "error_type"],
        registry=REGISTRY,
    ),
    {"field_name": _FIELD_NAMES},
)

# Status metrics (set by refresh_status_gauge, which also sums tenants when their labels are off)
FIELD_STATUS_GAUGE = Gauge(
    "profile_fields_by_status",
    "Count of fields by status",
    ["tenant_id", "status"],
    registry=REGISTRY,
)

# Gap fill metrics
GAP_FILL_ATTEMPTS = _Bounded(
    Counter(
        "gap_fill_attempts_total",
        "Gap fill attempt count",
        ["tenant_id", "scenario_id", "source"],
        registry=REGISTRY,
    ),
    {"scenario_id": _SCENARIOS},
)
# The seed's gauge, kept for compatibility: a per-process ratio, which cannot be aggregated
# across replicas. Dashboards and alerts use the two counters below.
GAP_FILL_SUCCESS_RATE = _Bounded(
    Gauge(
        "gap_fill_success_rate",
        "Gap fill success rate of this process (deprecated: use gap_fill_fields_filled_total "
        "/ gap_fill_fields_tried_total)",
        ["tenant_id", "scenario_id"],
        registry=REGISTRY,
    ),
    {"scenario_id": _SCENARIOS},
)
# success as counters (filled / tried in PromQL aggregates across replicas; a per-process
# ratio gauge would not)
GAP_FILL_FIELDS_TRIED = _Bounded(
    Counter(
        "gap_fill_fields_tried_total",
        "Fields gap fill tried to fill",
        ["tenant_id", "scenario_id"],
        registry=REGISTRY,
    ),
    {"scenario_id": _SCENARIOS},
)
GAP_FILL_FIELDS_FILLED = _Bounded(
    Counter(
        "gap_fill_fields_filled_total",
        "Fields gap fill filled",
        ["tenant_id", "scenario_id"],
        registry=REGISTRY,
    ),
    {"scenario_id": _SCENARIOS},
)

# Beyond the seed: stale fields let through under stale_field_action = "warn"
STALE_FIELD_WARNINGS = _Bounded(
    Counter(
        "profile_stale_field_warnings_total",
        "Stale fields accepted with a warning by missing-field evaluation",
        ["tenant_id", "field_name"],
        registry=REGISTRY,
    ),
    {"field_name": _FIELD_NAMES},
)


# Operations: every public ProfileStore method (a fixed set), per provider (installed code)
OPERATION_DURATION = Histogram(
    "ccvault_operation_duration_seconds",
    "Duration of public store operations, errors included",
    ["operation", "provider"],
    buckets=[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registry=REGISTRY,
)
OPERATION_ERRORS = Counter(
    "ccvault_operation_errors_total",
    "Public store operations that raised, by error class",
    ["operation", "provider", "error_type"],
    registry=REGISTRY,
)

# Worker
WORKER_HEARTBEAT = Gauge(
    "ccvault_worker_heartbeat_timestamp_seconds",
    "Unix time the worker last showed it is alive (before each tenant and each wait)",
    registry=REGISTRY,
)
WORKER_LAST_SWEEP = Gauge(
    "ccvault_worker_last_sweep_timestamp_seconds",
    "Unix time the worker last finished a sweep over every tenant",
    registry=REGISTRY,
)
WORKER_TENANT_FAILURES = Counter(
    "ccvault_worker_tenant_failures_total",
    "Tenants whose sweep failed",
    registry=REGISTRY,
)
WORKER_BATCHES = Counter(
    "ccvault_worker_batches_total",
    "Batches (one transaction each) the worker's bulk jobs ran, by job (expire, mark_orphans)",
    ["job"],
    registry=REGISTRY,
)
WORKER_BATCH_ROWS = Counter(
    "ccvault_worker_batch_rows_total",
    "Rows the worker's bulk jobs changed, by job (expire, mark_orphans)",
    ["job"],
    registry=REGISTRY,
)

_process_collectors: list[Any] = []


def configure(*, tenant_labels: bool = True, process_metrics: bool = True) -> None:
    """Apply ``[metrics] tenant_labels`` and ``process_metrics`` to this process's metrics
    (the CLI does it from the settings; an embedding application calls it once at start)."""
    _options["tenant_labels"] = tenant_labels
    if process_metrics and not _process_collectors:
        _process_collectors.extend(
            [ProcessCollector(registry=REGISTRY), PlatformCollector(registry=REGISTRY)]
        )
    elif not process_metrics:
        while _process_collectors:
            REGISTRY.unregister(_process_collectors.pop())


configure()  # the defaults: tenant labels, process metrics


_PROVIDERS: dict[type, str] = {}


def _provider_of(store: object) -> str:
    """The provider label of a store: its innermost store's distribution (``postgres`` for
    ``ccvault_postgres``...), found once per class and cached."""
    inner = store
    for _ in range(20):  # wrappers expose the store they wrap as ``inner``
        nested = getattr(inner, "inner", None)
        if nested is None or nested is inner:
            break
        inner = nested
    cls = type(inner)
    name = _PROVIDERS.get(cls)
    if name is None:
        name = cls.__module__.split(".")[0].removeprefix("ccvault_") or "unknown"
        _PROVIDERS[cls] = name
    return name


_F = TypeVar("_F", bound=Callable[..., Coroutine[Any, Any, Any]])


def _timed(operation: str, method: _F) -> _F:
    @functools.wraps(method)
    async def timed(self: object, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        provider = _provider_of(self)
        try:
            return await method(self, *args, **kwargs)
        except Exception as exc:
            OPERATION_ERRORS.labels(operation, provider, type(exc).__name__).inc()
            raise
        finally:
            OPERATION_DURATION.labels(operation, provider).observe(time.perf_counter() - started)

    timed.__ccvault_timed__ = True  # type: ignore[attr-defined]
    return timed  # type: ignore[return-value]


def instrument_operations(cls: type, names: Iterable[str]) -> None:
    """Time every named async method of ``cls`` (the public ``ProfileStore`` methods) into
    ``ccvault_operation_duration_seconds`` and count its errors; idempotent."""
    import inspect

    for name in sorted(names):
        method = vars(cls).get(name)
        if inspect.iscoroutinefunction(method) and not getattr(method, "__ccvault_timed__", 0):
            setattr(cls, name, _timed(name, method))


def serve(host: str = "127.0.0.1", port: int = 9464) -> tuple[WSGIServer, Thread]:
    """Serve :data:`REGISTRY` for Prometheus at ``http://host:port/metrics`` from a daemon
    thread; ``port=0`` picks a free port (``server.server_port``). Stop with
    ``server.shutdown()``."""
    return start_http_server(port, addr=host, registry=REGISTRY)


class ItemCounter(Protocol):
    """What :func:`refresh_status_gauge` needs of a store (any ``ProfileStore`` has it).

    A protocol rather than the store class, so this module does not depend on
    :mod:`ccvault.store` (which depends on it): the core's imports stay acyclic.
    """

    async def estimate_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]: ...


_status_by_tenant: dict[str, dict[str, int]] = {}
_status_lock = threading.Lock()


async def refresh_status_gauge(store: ItemCounter, tenant_id: UUID) -> dict[str, int]:
    """Set ``profile_fields_by_status`` for the tenant from the store; return the counts.
    With tenant labels off, the ``"_all"`` series is the sum over the tenants refreshed.

    The counts are the store's :meth:`estimate_items_by_status`: a cost bounded whatever the
    tenant's size (exact where counting is cheap, a bounded page sample of a large
    PostgreSQL table), never a full count of a large table every sweep."""
    counts = (await store.estimate_items_by_status(tenant_id))["fields"]
    with _status_lock:
        _status_by_tenant[str(tenant_id)] = dict(counts)
        if _options["tenant_labels"]:
            for status, count in counts.items():
                FIELD_STATUS_GAUGE.labels(tenant_id=str(tenant_id), status=status).set(count)
        else:
            _set_status_sums()
    return counts


def _set_status_sums() -> None:
    totals: dict[str, int] = {}
    for counts in _status_by_tenant.values():
        for status, count in counts.items():
            totals[status] = totals.get(status, 0) + count
    for status, count in totals.items():
        FIELD_STATUS_GAUGE.labels(tenant_id=ALL_TENANTS, status=status).set(count)


def forget_tenants(keep: Iterable[UUID]) -> None:
    """Drop the ``profile_fields_by_status`` series of every tenant not in ``keep`` (a
    tenant whose data is gone stops being reported, instead of its last value forever)."""
    kept = {str(tenant) for tenant in keep}
    with _status_lock:
        for tenant in [t for t in _status_by_tenant if t not in kept]:
            for status in _status_by_tenant.pop(tenant):
                with contextlib.suppress(KeyError):
                    FIELD_STATUS_GAUGE.remove(tenant, status)
        if not _options["tenant_labels"]:
            _set_status_sums()
