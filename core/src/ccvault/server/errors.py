"""Errors as HTTP responses: a status code and a JSON body that never quotes a value.

Every error body is an :class:`ErrorBody`: a stable ``code``, a fixed ``message`` written for
the status (never the exception's text, which may hold the value that was refused) and, for
malformed requests, where and what kind of problem (``loc`` and ``type``, no input).

=========================================  ======  =========================
error                                      status  code
=========================================  ======  =========================
malformed JSON                             400     ``malformed_json``
``ccvault.errors.ValidationError``         400     ``invalid_argument``
a write under the PII registry's agent id  400     ``reserved_agent``
bad Content-Length header                  400     ``invalid_content_length``
missing / wrong / revoked API key          401     ``unauthenticated``
key lacks the route's scope                403     ``forbidden``
body names another tenant than the key's   403     ``tenant_mismatch``
unknown id (or another tenant's)           404     ``not_found``
``IdentityConflictError``                  409     ``identity_conflict``
``ActiveFieldConflictError``               409     ``active_field_conflict``
``DependentsError``                        409     ``has_dependents``
other ``ConflictError``                    409     ``conflict``
body larger than ``max_body_bytes``        413     ``payload_too_large``
request does not match the schema          422     ``invalid_request``
``SchemaValidationError`` (definitions)    422     ``schema_validation_failed``
``ProviderUnavailableError``/storage down  503     ``unavailable``
anything else                              500     ``internal``
=========================================  ======  =========================
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any
from uuid import UUID

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ccvault import errors

__all__ = ["ApiError", "ErrorBody", "ErrorDetail", "error_response", "install_error_handlers"]

logger = logging.getLogger("ccvault.server")
_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class ErrorDetail(BaseModel):
    """Where a malformed request is wrong and how (never the value sent)."""

    loc: list[str | int] = Field(default_factory=list)
    type: str


class ErrorBody(BaseModel):
    """Every error response."""

    code: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)
    #: ids a conflict refers to (e.g. the later merge to undo first); ids, never values
    ids: list[UUID] = Field(default_factory=list)


class ApiError(Exception):
    """Raised by routes and dependencies to answer with this status, code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
    ids: list[UUID] | None = None,
) -> JSONResponse:
    body = ErrorBody(code=code, message=message, details=details or [], ids=ids or [])
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


_VAULT_ERRORS: list[tuple[type[errors.VaultError], int, str, str]] = [
    (
        errors.SchemaValidationError,
        422,
        "schema_validation_failed",
        "the value does not meet its field definition",
    ),
    (errors.ValidationError, 400, "invalid_argument", "an argument was refused as invalid"),
    (errors.NotFoundError, 404, "not_found", "not found"),
    (
        errors.IdentityConflictError,
        409,
        "identity_conflict",
        "the channel identity or customer id belongs to another profile",
    ),
    (
        errors.ActiveFieldConflictError,
        409,
        "active_field_conflict",
        "an active version of this field exists and supersede_existing is false",
    ),
    (
        errors.DependentsError,
        409,
        "has_dependents",
        "active items derive from this item; delete or supersede them first",
    ),
    (errors.ConflictError, 409, "conflict", "the write contradicts what is stored"),
    (
        errors.ProviderUnavailableError,
        503,
        "unavailable",
        "the store cannot be reached right now; retry later",
    ),
    (
        errors.CorruptRowError,
        500,
        "corrupt_row",
        "a stored row cannot be read back; the server's log names its table and column",
    ),
    (errors.StorageError, 503, "unavailable", "the store is not usable right now"),
]


def _vault_error(exc: errors.VaultError) -> JSONResponse:
    if isinstance(exc, errors.CorruptRowError):
        # its message names the table, column and kind of error, never stored text (built
        # by ccvault.storage.corrupt_row): what an operator needs to find the row
        logger.error("%s", exc)
    for cls, status, code, message in _VAULT_ERRORS:
        if isinstance(exc, cls):
            details: list[ErrorDetail] = []
            if isinstance(exc, errors.SchemaValidationError):
                # the field name and the kinds of problem, never the value
                details = [
                    ErrorDetail(loc=[exc.field_name], type=kind)
                    for kind in (exc.error_types or ["invalid"])
                ]
            headers = {"Retry-After": "1"} if status == 503 else None
            # a conflict may name the stored item it collides with: pass its id on (ids
            # are random, never personal data; the rest of the message is not passed on)
            ids = (
                [UUID(found) for found in dict.fromkeys(_UUID_TEXT.findall(str(exc)))]
                if isinstance(exc, errors.ConflictError)
                else []
            )
            return error_response(status, code, message, details, headers, ids)
    return _internal(exc)


def _internal(exc: BaseException) -> JSONResponse:
    # the type and the stack, not the message: a message may quote a value
    logger.error(
        "unhandled %s\n%s",
        type(exc).__name__,
        "".join(traceback.format_tb(exc.__traceback__)),
    )
    return error_response(500, "internal", "internal error")


def validation_details(problems: Any) -> tuple[bool, list[ErrorDetail]]:
    """(was it malformed JSON, the problems without their inputs)."""
    details: list[ErrorDetail] = []
    malformed = False
    for problem in problems:
        kind = str(problem.get("type", "invalid"))
        malformed = malformed or kind == "json_invalid"
        loc = [part if isinstance(part, int) else str(part) for part in problem.get("loc", ())]
        details.append(ErrorDetail(loc=loc, type=kind))
    return malformed, details


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to its status and an :class:`ErrorBody`."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers)

    async def on_request_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        malformed, details = validation_details(exc.errors())
        if malformed:
            return error_response(400, "malformed_json", "the request body is not valid JSON")
        return error_response(
            422, "invalid_request", "the request does not match the API schema", details
        )

    async def on_vault_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.VaultError)
        return _vault_error(exc)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        message = {
            404: "not found",
            405: "method not allowed",
            413: "the request body is too large",
        }.get(exc.status_code, code)
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, message, headers=headers)

    async def on_unhandled(request: Request, exc: Exception) -> JSONResponse:
        return _internal(exc)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(errors.VaultError, on_vault_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unhandled)
