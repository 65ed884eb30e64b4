"""The vault's Prometheus metrics (the seed's section 6), defined once and fed by real events.

Every metric lives in :data:`REGISTRY`, the vault's own collector registry, so an embedding
application can expose it beside its own or serve it alone (``ccvault metrics``).

Label values a client chooses — scenario ids, field names — are bounded per tenant: the
first :data:`MAX_SCENARIO_LABELS` scenario ids and :data:`MAX_FIELD_NAME_LABELS` field names
a process sees for a tenant keep their own series; any further one is counted under the value
``"_other"``. So no client can grow the number of series (and the scrape) without bound;
tenant ids are provisioned by the operator, and every other label takes a fixed set of values.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar
from uuid import UUID

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

if TYPE_CHECKING:
    from threading import Thread
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "DERIVATION_CHAIN_DEPTH",
    "FIELD_STATUS_GAUGE",
    "GAP_FILL_ATTEMPTS",
    "GAP_FILL_SUCCESS_RATE",
    "MAX_FIELD_NAME_LABELS",
    "MAX_SCENARIO_LABELS",
    "OTHER",
    "PROFILE_CACHE_HITS",
    "PROFILE_CACHE_INVALIDATIONS",
    "PROFILE_CACHE_MISSES",
    "REGISTRY",
    "SCHEMA_VALIDATION_ERRORS",
    "STALE_FIELD_WARNINGS",
    "ItemCounter",
    "field_name_label",
    "refresh_status_gauge",
    "scenario_label",
    "serve",
]

REGISTRY = CollectorRegistry(auto_describe=True)

#: Distinct scenario ids per tenant with a series of their own (then ``"_other"``).
MAX_SCENARIO_LABELS = 100
#: Distinct field names per tenant with a series of their own (then ``"_other"``).
MAX_FIELD_NAME_LABELS = 200
#: The label value shared by every client-chosen value beyond the bound.
OTHER = "_other"

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
        return self.metric.labels(**labels)

    def __getattr__(self, name: str) -> object:
        return getattr(self.metric, name)


# Cache metrics
PROFILE_CACHE_HITS = Counter(
    "profile_cache_hits_total", "Profile cache hit count", ["tenant_id"], registry=REGISTRY
)
PROFILE_CACHE_MISSES = Counter(
    "profile_cache_misses_total", "Profile cache miss count", ["tenant_id"], registry=REGISTRY
)
PROFILE_CACHE_INVALIDATIONS = Counter(
    "profile_cache_invalidations_total",
    "Profile cache invalidation count",
    ["tenant_id", "reason"],
    registry=REGISTRY,
)

# Lineage metrics
DERIVATION_CHAIN_DEPTH = Histogram(
    "profile_derivation_chain_depth",
    "Depth of derivation chains traversed",
    ["tenant_id"],
    buckets=[1, 2, 3, 5, 10, 20],
    registry=REGISTRY,
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

# Status metrics
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
GAP_FILL_SUCCESS_RATE = _Bounded(
    Gauge(
        "gap_fill_success_rate",
        "Gap fill success rate",
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

    async def count_items_by_status(self, tenant_id: UUID) -> dict[str, dict[str, int]]: ...


async def refresh_status_gauge(store: ItemCounter, tenant_id: UUID) -> dict[str, int]:
    """Set ``profile_fields_by_status`` for the tenant from the store; return the counts."""
    counts = (await store.count_items_by_status(tenant_id))["fields"]
    for status, count in counts.items():
        FIELD_STATUS_GAUGE.labels(tenant_id=str(tenant_id), status=status).set(count)
    return counts
