"""OpenTelemetry spans for the public store operations (the ``otel`` extra), off by default.

With ``[tracing] enabled = true`` (:class:`~ccvault.settings.TracingSettings`; applied by
:func:`~ccvault.registry.open_store`, or by :func:`configure` in an embedding application)
every public :class:`~ccvault.store.ProfileStore` operation runs in one span named
``ccvault.<operation>`` (``ccvault.get_profile``...), a child of the caller's current span.
The wrappers (cache, encryption, client) forward hook to hook below the one public layer, so
a call through the whole stack is one span, not one per layer.

Attributes, and nothing else (no field names or values, no channel ids, no exception
messages, no stack traces — personal data never reaches a trace backend):

* ``ccvault.operation``: the method name (a fixed set);
* ``ccvault.provider``: the innermost store's provider (``postgres``, ``inmemory``...);
* ``ccvault.outcome``: ``ok`` or ``error``;
* ``error.type``: on failure, the exception class name (also the span status description);
* ``ccvault.tenant_id``: only with ``[tracing] tenant_ids = true`` (tenant ids are
  provisioned by the operator, but a trace backend may be shared more widely than metrics).

Spans go to the global tracer provider (``opentelemetry.trace.set_tracer_provider``), which
the application configures with the SDK and its exporters; ``opentelemetry-api`` alone
records nothing. When tracing is off, nothing of OpenTelemetry is imported and the store
methods are not wrapped at all: the disabled path costs nothing.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ccvault import metrics
from ccvault.extras import requires_extra

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["configure", "enabled", "register_operations"]

#: The instrumentation scope name of the spans.
TRACER_NAME = "ccvault"

_lock = threading.Lock()
# (class, operation names) registered by ccvault.store; wrapped only while tracing is on
_registered: list[tuple[type, tuple[str, ...]]] = []
# (class, name) -> the method before tracing wrapped it, to restore when tracing is off
_originals: dict[tuple[type, str], Callable[..., Any]] = {}
_state: dict[str, Any] = {"tracer": None, "tenant_ids": False}


def register_operations(cls: type, names: Iterable[str]) -> None:
    """Declare the public async operations of ``cls`` (``ccvault.store`` does it for
    ``ProfileStore``). They are wrapped when tracing is enabled, and at once if it is."""
    with _lock:
        entry = (cls, tuple(sorted(names)))
        if entry not in _registered:
            _registered.append(entry)
        if _state["tracer"] is not None:
            _wrap(*entry)


def enabled() -> bool:
    """Whether spans are being recorded."""
    return _state["tracer"] is not None


def configure(*, enabled: bool, tenant_ids: bool = False) -> None:
    """Turn tracing on or off for this process (idempotent).

    On: imports OpenTelemetry (``pip install 'ccvault[otel]'``, else
    :class:`~ccvault.errors.MissingExtraError`), takes a tracer from the global provider and
    wraps the registered operations. Off: restores the unwrapped methods.
    ``tenant_ids``: add the ``ccvault.tenant_id`` attribute.
    """
    with _lock:
        if not enabled:
            _state["tracer"] = None
            for (cls, name), method in _originals.items():
                setattr(cls, name, method)
            _originals.clear()
            return
        with requires_extra("otel", "Tracing ([tracing] enabled = true)"):
            from opentelemetry import trace

        from ccvault import __version__

        _state["tracer"] = trace.get_tracer(TRACER_NAME, __version__)
        _state["tenant_ids"] = tenant_ids
        for entry in _registered:
            _wrap(*entry)


def _wrap(cls: type, names: tuple[str, ...]) -> None:
    for name in names:
        method = vars(cls).get(name)
        if method is None or (cls, name) in _originals:
            continue
        _originals[(cls, name)] = method
        setattr(cls, name, _traced(name, method))


def _tenant_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    tenant = kwargs.get("tenant_id", args[0] if args else None)
    return str(tenant) if isinstance(tenant, UUID) else None


def _traced(
    operation: str, method: Callable[..., Coroutine[Any, Any, Any]]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    span_name = f"ccvault.{operation}"

    @functools.wraps(method)
    async def traced(self: object, *args: Any, **kwargs: Any) -> Any:
        tracer: Tracer | None = _state["tracer"]
        if tracer is None:  # turned off while this wrapper was still in place
            return await method(self, *args, **kwargs)
        attributes: dict[str, str] = {
            "ccvault.operation": operation,
            "ccvault.provider": metrics._provider_of(self),
        }
        if _state["tenant_ids"]:
            tenant = _tenant_of(args, kwargs)
            if tenant is not None:
                attributes["ccvault.tenant_id"] = tenant
        # exceptions are recorded by type only: their messages and tracebacks stay out
        with tracer.start_as_current_span(
            span_name,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await method(self, *args, **kwargs)
            except BaseException as exc:
                error_type = type(exc).__name__
                span.set_attribute("ccvault.outcome", "error")
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR, error_type))
                raise
            span.set_attribute("ccvault.outcome", "ok")
            return result

    traced.__ccvault_traced__ = True  # type: ignore[attr-defined]
    return traced
