"""Secrets in settings: connection URLs whose password never shows, and ``*_FILE`` secrets.

:class:`SecretUrl` holds a connection URL (a PostgreSQL DSN, a Redis or MongoDB URL). Its
``repr``, ``str`` and JSON serialisation show the URL with the password (and any
``password=``-like query parameter) replaced by ``***``, so the host and database stay
visible in logs and errors; :meth:`SecretUrl.get_secret_value` gives the real URL to the
code that connects. Plain secrets (the PII keyring) use :class:`pydantic.SecretStr`.

Container platforms hand secrets over as files: :func:`read_secret_file` reads one (a
single trailing newline dropped, at most 64 KiB), and :func:`resolve_file_keys` turns a
``NAME_file`` key of a settings table (from ``CCVAULT_..._FILE`` in the environment or from
TOML) into ``NAME`` read from that file, for the secret-bearing names only.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, SecretStr
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from ccvault import errors

__all__ = [
    "MASK",
    "SecretUrl",
    "check_port",
    "is_secret_key",
    "mask_options",
    "mask_url",
    "read_secret_file",
    "resolve_file_keys",
]

MASK = "***"
#: A secret file larger than this is refused (a typo pointing at a large file or a device).
MAX_SECRET_FILE_BYTES = 64 * 1024

# option names whose values are secrets (or URLs that may embed one)
_SECRET_KEY = re.compile(
    r"(^|_)(dsn|uri|url|password|passwd|pwd|secret|token|key|key_id|credentials?)$"
)
_SECRET_QUERY = re.compile(r"(?i)(pass|pwd|secret|token|key|credential|auth)")


def is_secret_key(name: str) -> bool:
    """True for an option name that holds a secret or a URL that may embed one."""
    return bool(_SECRET_KEY.search(name.lower()))


def mask_url(url: str) -> str:
    """``url`` with its password and secret-looking query values replaced by ``***``.

    A string that does not parse as a URL is masked entirely.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if not parts.scheme or "://" not in url:
        return MASK if url else url
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hosts}" if colon else f"{user}@{hosts}"
    query = parts.query
    if query:
        masked = []
        for item in query.split("&"):
            name, eq, _value = item.partition("=")
            masked.append(f"{name}={MASK}" if eq and _SECRET_QUERY.search(name) else item)
        query = "&".join(masked)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class SecretUrl:
    """A connection URL that never prints its password (see the module docstring).

    Equal to another :class:`SecretUrl` with the same URL; never equal to a plain string.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a SecretUrl holds a string")
        self._value = value

    def get_secret_value(self) -> str:
        """The real URL, password included: only for the code that connects."""
        return self._value

    def masked(self) -> str:
        """The URL with its password replaced by ``***``."""
        return mask_url(self._value)

    def __str__(self) -> str:
        return self.masked()

    def __repr__(self) -> str:
        return f"SecretUrl({self.masked()!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretUrl):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((SecretUrl, self._value))

    def __len__(self) -> int:
        return len(self._value)

    @classmethod
    def _validate(cls, value: object) -> SecretUrl:
        if isinstance(value, SecretUrl):
            return value
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise ValueError("must be a URL string")
        return cls(value)

    @staticmethod
    def _serialize(value: SecretUrl, info: core_schema.SerializationInfo) -> object:
        return value.masked() if info.mode_is_json() else value

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                cls._serialize, info_arg=True
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "uri", "writeOnly": True}


def check_port(url: str) -> None:
    """Raise ValueError (naming no part of ``url``) when the URL does not parse or a host's
    port is not a number from 1 to 65535 — rather than a traceback from the driver later."""
    try:
        authority = urlsplit(url).netloc
    except ValueError:
        raise ValueError("is not a valid URL") from None
    for host in authority.rpartition("@")[2].split(","):
        _, colon, port = host.rpartition(":")
        if colon and port and "]" not in port:
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("has an invalid port (must be a number from 1 to 65535)")


def mask_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a raw options table with every secret-bearing value masked."""
    masked: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Mapping):
            masked[key] = mask_options(value)
        elif isinstance(value, SecretUrl | SecretStr):
            masked[key] = str(value)
        elif isinstance(value, str) and is_secret_key(str(key)):
            masked[key] = mask_url(value) if "://" in value else (MASK if value else value)
        else:
            masked[key] = value
    return masked


def read_secret_file(path: str, *, source: str) -> str:
    """The contents of the secret file ``path`` (named ``source`` in errors), one trailing
    newline dropped. Errors name the variable and the path, never any contents."""
    try:
        with open(os.path.expanduser(path), "rb") as handle:
            data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise errors.ConfigurationError(
            f"{source}: cannot read the secret file {path!r} ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise errors.ConfigurationError(
            f"{source}: the secret file {path!r} is larger than {MAX_SECRET_FILE_BYTES} bytes"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.ConfigurationError(
            f"{source}: the secret file {path!r} is not UTF-8 text"
        ) from None
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def resolve_file_keys(table: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """A copy of ``table`` where each ``NAME_file`` key of a secret-bearing ``NAME`` (at any
    depth) is replaced by ``NAME`` read from that file. ``NAME`` and ``NAME_file`` together
    are ambiguous: a :class:`~ccvault.errors.ConfigurationError`."""
    resolved: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            resolved[key] = resolve_file_keys(value, where=f"{where}{key}.")
    for key, value in table.items():
        if isinstance(value, Mapping):
            continue
        name = str(key)
        base = name[: -len("_file")] if name.lower().endswith("_file") else ""
        if base and is_secret_key(base) and isinstance(value, str):
            if base in table:
                raise errors.ConfigurationError(
                    f"{where}{base} and {where}{name} are both set; set only one"
                )
            resolved[base] = read_secret_file(value, source=f"{where}{name}")
        else:
            resolved[key] = value
    return resolved
