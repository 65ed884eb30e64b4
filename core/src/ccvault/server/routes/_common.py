"""Helpers shared by the routers."""

from __future__ import annotations

from typing import Annotated, TypeVar
from uuid import UUID

from fastapi import Path

from ccvault.models import FIELD_NAME_PATTERN
from ccvault.server.deps import Caller
from ccvault.server.errors import ApiError

__all__ = ["AssetNameParam", "FieldNameParam", "check_tenant", "found"]

_T = TypeVar("_T")

FieldNameParam = Annotated[
    str, Path(pattern=FIELD_NAME_PATTERN, min_length=1, max_length=50, description="field name")
]
AssetNameParam = Annotated[
    str, Path(pattern=FIELD_NAME_PATTERN, min_length=1, max_length=100, description="asset name")
]


def found(value: _T | None, what: str = "not found") -> _T:
    """``value``, or a 404 (unknown id, deleted, or another tenant's)."""
    if value is None:
        raise ApiError(404, "not_found", what)
    return value


def check_tenant(caller: Caller, tenant_id: UUID) -> None:
    """A body naming a tenant must name the key's own."""
    if tenant_id != caller.tenant_id:
        raise ApiError(403, "tenant_mismatch", "the body names another tenant than the API key's")
