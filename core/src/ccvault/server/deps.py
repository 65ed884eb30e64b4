"""What every route depends on: the caller's key (tenant and scopes) and the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ccvault.gapfill import EnhancedGapFillService
from ccvault.server.auth import ApiKey, ApiKeyStore
from ccvault.server.errors import ApiError
from ccvault.store import ProfileStore

__all__ = [
    "Admin",
    "Caller",
    "Needs",
    "PiiReader",
    "Reader",
    "Store",
    "Writer",
    "authenticate",
    "get_store",
]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `ccvault apikey create`: `Authorization: Bearer ccv_...`.",
)
_UNAUTHENTICATED = ApiError(
    401,
    "unauthenticated",
    "a valid API key is required: Authorization: Bearer <key>",
    headers={"WWW-Authenticate": "Bearer"},
)


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller: the tenant always comes from here, never from the request."""

    key: ApiKey

    @property
    def tenant_id(self) -> UUID:
        return self.key.tenant_id

    def can(self, scope: str) -> bool:
        return scope in self.key.scopes


def authenticate(request: Request, token: str | None) -> Caller:
    """The caller holding ``token``, else 401 (missing, malformed, unknown, revoked)."""
    keys: ApiKeyStore = request.app.state.keys
    found = keys.authenticate(token) if token else None
    if found is None:
        raise _UNAUTHENTICATED
    request.state.key_id = found.key_id
    return Caller(found)


class Needs:
    """Dependency: an authenticated caller whose key has ``scope`` (401, else 403)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        caller = authenticate(request, credentials.credentials if credentials else None)
        if not caller.can(self.scope):
            raise ApiError(403, "forbidden", f"this API key lacks the {self.scope!r} scope")
        return caller


def get_store(request: Request) -> ProfileStore:
    store: ProfileStore = request.app.state.store
    return store


def get_gap_fill(request: Request) -> EnhancedGapFillService:
    service: EnhancedGapFillService = request.app.state.gap_fill
    return service


Reader = Annotated[Caller, Depends(Needs("read"))]
Writer = Annotated[Caller, Depends(Needs("write"))]
PiiReader = Annotated[Caller, Depends(Needs("pii:read"))]
Admin = Annotated[Caller, Depends(Needs("admin"))]
Store = Annotated[ProfileStore, Depends(get_store)]
GapFill = Annotated[EnhancedGapFillService, Depends(get_gap_fill)]
