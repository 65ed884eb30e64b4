"""The HTTP API's routers, one module per concept; every route is under ``/v1``."""

from __future__ import annotations

from fastapi import APIRouter

from ccvault.server.routes import gapfill, lineage, operations, profiles, schema

__all__ = ["PREFIX", "ROUTERS", "api_router"]

PREFIX = "/v1"
#: every router of the API, mounted under PREFIX (tests walk this to cover every route)
ROUTERS: tuple[APIRouter, ...] = tuple(
    module.router for module in (profiles, lineage, schema, gapfill, operations)
)
api_router = APIRouter(prefix=PREFIX)
for _router in ROUTERS:
    api_router.include_router(_router)
