"""``[providers.postgres]``: how the PostgreSQL provider connects.

Example::

    [providers.postgres]
    dsn = "${DATABASE_URL}"            # or CCVAULT_PROVIDERS__POSTGRES__DSN in the environment
    schema = "ccvault"                 # optional; default: "public"
    min_pool_size = 2
    max_pool_size = 20
    statement_timeout_seconds = 30
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ccvault.secretvalues import SecretUrl, check_port
from ccvault.settings import expand_env

__all__ = ["DEFAULT_DSN", "PostgresSettings"]

DEFAULT_DSN = "postgresql://127.0.0.1:5432/postgres"

# A schema name is spliced into DDL (it cannot be a bind parameter), so it is restricted to
# plain lower-case identifiers: nothing a caller types can ever reach SQL text unchecked.
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresSettings(BaseModel):
    """Validated ``[providers.postgres]`` options. Unknown keys are refused."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, frozen=True, hide_input_in_errors=True
    )

    #: The connection URL; its password is a secret (``repr``, ``str`` and JSON show it
    #: masked; the store connects with ``dsn.get_secret_value()``).
    dsn: SecretUrl = SecretUrl(DEFAULT_DSN)
    #: The PostgreSQL schema holding the vault's tables (created by ``ccvault migrate``).
    db_schema: str = Field(default="public", alias="schema")
    min_pool_size: int = Field(default=1, ge=0, le=1000)
    max_pool_size: int = Field(default=10, ge=1, le=1000)
    #: Server-side ``statement_timeout`` for every statement; 0 disables it.
    statement_timeout_seconds: float = Field(default=30.0, ge=0)
    #: How long to wait for a TCP connection to the server.
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    #: How long a call waits for a free pooled connection before giving up.
    pool_acquire_timeout_seconds: float = Field(default=10.0, gt=0)
    #: Client-side guard against a server that stops answering (0: none).
    command_timeout_seconds: float = Field(default=0.0, ge=0)
    #: Idle pooled connections are closed after this many seconds (0: never, the default:
    #: the idle timer costs a little on every call, and idle connections are cheap).
    max_inactive_connection_lifetime_seconds: float = Field(default=0.0, ge=0)
    #: Every statement is a key lookup whose best plan does not depend on the values, so
    #: prepared statements use one generic plan instead of being re-planned per call.
    plan_cache_mode: Literal["auto", "force_generic_plan", "force_custom_plan"] = (
        "force_generic_plan"
    )
    #: Attempts for a write that lost a race (unique violation, serialization, deadlock).
    max_write_attempts: int = Field(default=50, ge=1, le=10_000)
    #: Apply pending schema migrations when a store starts. Off by default: starting never
    #: changes the schema, ``ccvault migrate`` does (run by a role allowed to; the runtime
    #: role then needs DML rights only, see docs/operations.md). Turn on only where the
    #: runtime role owns the schema (a throw-away or single-user database).
    migrate_on_start: bool = False
    #: Connecting through PgBouncer (or another pooler) in TRANSACTION mode: no prepared
    #: statement cache (``statement_cache_size=0``) and no session parameters at connect
    #: (such a pooler refuses them). ``search_path`` (= ``schema``), ``statement_timeout``
    #: and ``plan_cache_mode`` must then be set on the role, e.g. ``ALTER ROLE app IN
    #: DATABASE db SET search_path = ccvault``; ``setup()`` refuses a role whose
    #: ``search_path`` does not lead to ``schema``. See docs/operations.md (PgBouncer).
    transaction_pooler: bool = False

    @field_validator("dsn", mode="before")
    @classmethod
    def _expand_dsn(cls, value: object) -> object:
        # `load_settings` already expands ${VAR} in TOML; options built by hand get it too
        return expand_env(value)

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, value: SecretUrl) -> SecretUrl:
        dsn = value.get_secret_value()
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("dsn must be a postgresql:// URL (is ${VAR} set in the environment?)")
        try:
            check_port(dsn)  # a clear error here, not a traceback from the driver
        except ValueError as exc:
            raise ValueError(f"dsn {exc}") from None
        return value

    @field_validator("db_schema")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        if not _SCHEMA_RE.match(value):
            raise ValueError("schema must match ^[a-z_][a-z0-9_]{0,62}$")
        return value

    @model_validator(mode="after")
    def _pool_bounds(self) -> PostgresSettings:
        if self.min_pool_size > self.max_pool_size:
            raise ValueError("min_pool_size must not exceed max_pool_size")
        return self
