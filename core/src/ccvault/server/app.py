"""The ASGI application behind ``ccvault serve``: the HTTP API, operations endpoints, MCP.

:func:`create_app` builds it from settings. Its lifespan opens the store with
``ccvault.open_store`` (or uses one passed in), the API key file and the gap-fill service.

Operations endpoints (no key needed): ``/healthz`` (the process answers), ``/readyz`` (the
store and, when enabled, the Redis cache answer; 503 otherwise), ``/metrics`` (Prometheus:
the vault's metrics plus ``ccvault_http_requests_total`` and
``ccvault_http_request_duration_seconds`` by route template), ``/openapi.json``, ``/docs``.
Every other route is under ``/v1`` and needs an API key.

Access log: one JSON line per request on the ``ccvault.server.access`` logger with the
method, the route *template* (``/v1/profiles/{profile_id}``, never the raw path or query
string), the status, the duration and the key id. Bodies, ids and identities are never
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ccvault import metrics
from ccvault.gapfill import EnhancedGapFillService
from ccvault.registry import open_store
from ccvault.server.auth import ApiKeyStore
from ccvault.server.clock import install_request_clock, request_clock
from ccvault.server.errors import ErrorBody, error_response, install_error_handlers
from ccvault.server.options import ServerOptions
from ccvault.server.routes import api_router
from ccvault.server.schemas import Health
from ccvault.settings import VaultSettings
from ccvault.store import ProfileStore

__all__ = ["API_VERSION", "create_app"]

API_VERSION = "1.0.0"
access_logger = logging.getLogger("ccvault.server.access")
logger = logging.getLogger("ccvault.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ZERO = UUID(int=0)
_READY_TIMEOUT_SECONDS = 2.0


class _HttpMetrics:
    """Request counters by route template (no ids, no tenants: bounded label values)."""

    _instance: _HttpMetrics | None = None

    def __init__(self) -> None:
        self.requests = Counter(
            "ccvault_http_requests_total",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=metrics.REGISTRY,
        )
        self.duration = Histogram(
            "ccvault_http_request_duration_seconds",
            "HTTP request duration",
            ["method", "route"],
            registry=metrics.REGISTRY,
        )

    @classmethod
    def get(cls) -> _HttpMetrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        # a route of an included router knows only its own part of the path
        if str(scope.get("path", "")).startswith("/v1/") and not path.startswith("/v1/"):
            return "/v1" + path
        return path
    raw = str(scope.get("path", ""))
    # unmatched paths: a fixed label, so arbitrary URLs cannot grow the metric's labels
    return "/mcp" if raw.startswith("/mcp") else "<unmatched>"


class _AccessLog:
    """Access log, request metrics, and a JSON 500 (without the message) for anything
    unhandled, so no exception text reaches a log or a client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            logger.error("unhandled %s on %s", type(exc).__name__, _route_template(scope))
            if not response_started:
                status = 500
                body = ErrorBody(code="internal", message="internal error")
                response = JSONResponse(body.model_dump(mode="json"), status_code=500)
                await response(scope, receive, send)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = str(scope.get("method", ""))
            http_metrics = _HttpMetrics.get()
            http_metrics.requests.labels(method, route, str(status)).inc()
            http_metrics.duration.labels(method, route).observe(elapsed)
            state = scope.get("state") or {}
            access_logger.info(
                json.dumps(
                    {
                        "event": "access",
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "key_id": state.get("key_id"),
                    }
                )
            )


class _BodyLimit:
    """413 for a body over ``limit`` bytes: at once from Content-Length, else while reading."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.limit:
                    too_large = declared > self.limit
                    status, code = (
                        (413, "payload_too_large") if too_large else (400, "invalid_content_length")
                    )
                    response = error_response(
                        status,
                        code,
                        f"the request body exceeds {self.limit} bytes"
                        if too_large
                        else "invalid Content-Length",
                    )
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise StarletteHTTPException(413, "payload too large")
            return message

        await self.app(scope, limited, send)


async def _check_redis(settings: VaultSettings) -> None:
    from redis.asyncio import Redis, RedisCluster

    options: dict[str, Any] = {
        "socket_timeout": settings.redis.socket_timeout_seconds,
        "socket_connect_timeout": settings.redis.connect_timeout_seconds,
    }
    # the URL may be a secret type (with the password kept apart): ask for the usable one
    connection_url = getattr(settings.redis, "connection_url", None)
    url = str(connection_url() if callable(connection_url) else settings.redis.url)
    if settings.redis.cluster:
        cluster = RedisCluster.from_url(url, **options)
        try:
            await cluster.ping()
        finally:
            await cluster.aclose()
    else:
        client = Redis.from_url(url, **options)
        try:
            await client.ping()
        finally:
            await client.aclose()


CLOCK_HEADER = b"x-ccvault-clock"


class _ClientClock:
    """Sets the request clock from ``X-Ccvault-Clock`` (installed only when trusted)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent: datetime | None = None
        for name, value in scope.get("headers", []) if scope["type"] == "http" else []:
            if name == CLOCK_HEADER:
                try:
                    sent = datetime.fromisoformat(value.decode("ascii"))
                except ValueError:
                    sent = None
                if sent is not None and sent.tzinfo is None:
                    sent = None
        token = request_clock.set(sent.astimezone(UTC) if sent is not None else None)
        try:
            await self.app(scope, receive, send)
        finally:
            request_clock.reset(token)


def _operation_id(route: APIRoute) -> str:
    # the Python function's name: the same name as the ProfileStore method where one exists
    return route.name


def create_app(
    settings: VaultSettings,
    *,
    store: ProfileStore | None = None,
    keys: ApiKeyStore | None = None,
    options: ServerOptions | None = None,
    mcp: bool = True,
) -> FastAPI:
    """The application. ``store``: serve this (already set-up) store instead of opening one
    from ``settings``; ``keys``: this key store instead of ``[server] api_keys_path``;
    ``options``: key file and limits; ``mcp``: mount the MCP server (streamable HTTP) at
    ``/mcp``."""
    options = options or ServerOptions()
    key_store = keys if keys is not None else ApiKeyStore(options.api_keys_path)
    mcp_server: Any = None
    if mcp:
        from ccvault.server.mcp import create_mcp_server

        mcp_server = create_mcp_server()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            served = (
                store
                if store is not None
                else await stack.enter_async_context(open_store(settings))
            )
            app.state.store = served
            app.state.keys = key_store
            app.state.settings = settings
            app.state.gap_fill = EnhancedGapFillService.from_settings(served, settings)
            install_request_clock(served)
            if mcp_server is not None:
                from ccvault.server.mcp import bind_http

                await stack.enter_async_context(bind_http(mcp_server, app))
            try:
                yield
            finally:
                if keys is None:
                    key_store.close()

    app = FastAPI(
        title="ccvault",
        version=API_VERSION,
        summary="Customer Context Vault: what an AI agent knows about each customer.",
        description=(
            "Every `/v1` route needs an API key (`ccvault apikey create`) sent as "
            "`Authorization: Bearer ccv_...`. The key decides the tenant; PII field values are "
            "masked unless the key has the `pii:read` scope. Errors are JSON `ErrorBody` "
            "objects that never quote a value."
        ),
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        responses={
            400: {"model": ErrorBody, "description": "Bad input"},
            401: {"model": ErrorBody, "description": "Missing, wrong or revoked API key"},
            403: {"model": ErrorBody, "description": "Scope missing or another tenant named"},
            404: {"model": ErrorBody, "description": "Not found (or another tenant's)"},
            409: {"model": ErrorBody, "description": "Conflict with what is stored"},
            413: {"model": ErrorBody, "description": "Body too large"},
            422: {"model": ErrorBody, "description": "Request does not match the schema"},
            503: {"model": ErrorBody, "description": "Store unavailable"},
        },
    )
    install_error_handlers(app)
    app.include_router(api_router)

    @app.get("/healthz", tags=["operations"], response_model=Health)
    async def healthz() -> Health:
        """The process is alive."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["operations"],
        response_model=Health,
        responses={503: {"model": Health, "description": "Not ready"}},
    )
    async def readyz(request: Request) -> Response:
        """The store (and the Redis cache, when enabled) answer."""
        checks: dict[str, str] = {}
        served: ProfileStore = request.app.state.store
        try:
            await asyncio.wait_for(served.get_by_id(_ZERO, _ZERO), _READY_TIMEOUT_SECONDS)
            checks["store"] = "ok"
        except Exception as exc:  # any failure means not ready
            checks["store"] = f"unreachable ({type(exc).__name__})"
        if settings.profile.cache_enabled:
            try:
                await asyncio.wait_for(_check_redis(settings), _READY_TIMEOUT_SECONDS)
                checks["cache"] = "ok"
            except Exception as exc:
                checks["cache"] = f"unreachable ({type(exc).__name__})"
        ready = all(value == "ok" for value in checks.values())
        body = Health(status="ok" if ready else "unavailable", checks=checks)
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    if mcp_server is not None:
        from ccvault.server.mcp import http_app

        app.mount("/mcp", http_app(mcp_server, options.host))

    # the last added is the outermost: the access log sees every answer, 413s included
    if options.trust_client_clock:
        app.add_middleware(_ClientClock)
    app.add_middleware(_BodyLimit, limit=options.max_body_bytes)
    app.add_middleware(_AccessLog)
    return app
