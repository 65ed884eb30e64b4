"""The vault's Prometheus metrics (the seed's section 6), defined once and fed by real events.

Every metric lives in :data:`REGISTRY`, the vault's own collector registry, so an embedding
application can expose it beside its own or serve it alone (``ccvault metrics``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol
from uuid import UUID

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from threading import Thread
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "DERIVATION_CHAIN_DEPTH",
    "FIELD_STATUS_GAUGE",
    "GAP_FILL_ATTEMPTS",
    "GAP_FILL_SUCCESS_RATE",
    "PROFILE_CACHE_HITS",
    "PROFILE_CACHE_INVALIDATIONS",
    "PROFILE_CACHE_MISSES",
    "REGISTRY",
    "SCHEMA_VALIDATION_ERRORS",
    "STALE_FIELD_WARNINGS",
    "ItemCounter",
    "refresh_status_gauge",
    "serve",
]

REGISTRY = CollectorRegistry(auto_describe=True)

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
SCHEMA_VALIDATION_ERRORS = Counter(
    "profile_schema_validation_errors_total",
    "Schema validation error count",
    ["tenant_id", "field_name", "error_type"],
    registry=REGISTRY,
)

# Status metrics
FIELD_STATUS_GAUGE = Gauge(
    "profile_fields_by_status",
    "Count of fields by status",
    ["tenant_id", "status"],
    registry=REGISTRY,
)

# Gap fill metrics
GAP_FILL_ATTEMPTS = Counter(
    "gap_fill_attempts_total",
    "Gap fill attempt count",
    ["tenant_id", "scenario_id", "source"],
    registry=REGISTRY,
)
GAP_FILL_SUCCESS_RATE = Gauge(
    "gap_fill_success_rate",
    "Gap fill success rate",
    ["tenant_id", "scenario_id"],
    registry=REGISTRY,
)

# Beyond the seed: stale fields let through under stale_field_action = "warn"
STALE_FIELD_WARNINGS = Counter(
    "profile_stale_field_warnings_total",
    "Stale fields accepted with a warning by missing-field evaluation",
    ["tenant_id", "field_name"],
    registry=REGISTRY,
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
