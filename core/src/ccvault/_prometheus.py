"""prometheus-client for :mod:`ccvault.metrics`, or no-op stand-ins when the ``metrics``
extra is not installed.

The store records metrics on every operation, so the metrics module must import and every
metric must accept its calls either way: without prometheus-client each metric is a no-op
that keeps nothing; only serving them (:func:`start_http_server`) needs the extra. Type
checkers see the real library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "AVAILABLE",
    "CollectorRegistry",
    "Counter",
    "Gauge",
    "Histogram",
    "MetricWrapperBase",
    "PlatformCollector",
    "ProcessCollector",
    "start_http_server",
]

if TYPE_CHECKING:
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        PlatformCollector,
        ProcessCollector,
        start_http_server,
    )
    from prometheus_client.metrics import MetricWrapperBase

    AVAILABLE: bool
else:
    try:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            PlatformCollector,
            ProcessCollector,
            start_http_server,
        )
        from prometheus_client.metrics import MetricWrapperBase

        AVAILABLE = True
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "prometheus_client":
            raise
        AVAILABLE = False

        class MetricWrapperBase:
            """A metric that records nothing: every label set is the metric itself."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

            def labels(self, *args: Any, **kwargs: Any) -> MetricWrapperBase:
                return self

            def remove(self, *args: Any) -> None:
                pass

            def clear(self) -> None:
                pass

            def inc(self, amount: float = 1) -> None:
                pass

            def dec(self, amount: float = 1) -> None:
                pass

            def set(self, value: float) -> None:
                pass

            def observe(self, amount: float) -> None:
                pass

        Counter = Gauge = Histogram = MetricWrapperBase

        class CollectorRegistry:
            """A registry that holds nothing."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

            def register(self, collector: object) -> None:
                pass

            def unregister(self, collector: object) -> None:
                pass

            def collect(self) -> list[object]:
                return []

            def get_sample_value(self, *args: Any, **kwargs: Any) -> None:
                return None

        class ProcessCollector:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

        PlatformCollector = ProcessCollector

        def start_http_server(*args: Any, **kwargs: Any) -> Any:
            from ccvault import errors

            raise errors.MissingExtraError("metrics", "Serving Prometheus metrics")
