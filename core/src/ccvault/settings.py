"""Settings: built-in defaults (the seed's section 5), a TOML file, the environment.

Precedence, highest first: keyword overrides to :func:`load_settings`, environment variables
(``CCVAULT_PROFILE__CACHE_ENABLED=false``, ``CCVAULT_REDIS__URL=...``,
``CCVAULT_PROVIDERS__POSTGRES__DSN=...``), the TOML file, the built-in defaults. A TOML file
need only hold the keys it changes. ``${VAR}`` in any string value is replaced by that
environment variable (empty when unset). Everything is validated with pydantic at load; a bad
value raises :class:`~ccvault.errors.ConfigurationError` naming the key and the reason.
"""

from __future__ import annotations

import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ccvault import errors
from ccvault.store import StoreRules

__all__ = [
    "FreshnessSettings",
    "GapFillSettings",
    "MetricsSettings",
    "ProfileSettings",
    "RedisSettings",
    "VaultSettings",
    "WorkerSettings",
    "expand_env",
    "load_settings",
]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: Any) -> Any:
    """Replace ``${VAR}`` in every string inside ``value`` by the environment's value."""
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), value)
    if isinstance(value, dict):
        return {key: expand_env(item) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item) for item in value]
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class FreshnessSettings(_Section):
    """``[profile.freshness]``: default freshness and what a stale field means."""

    default_freshness_seconds: int = Field(default=0, ge=0)
    stale_field_action: Literal["warn", "block", "ignore"] = "warn"


class GapFillSettings(_Section):
    """``[profile.gap_fill]``: confidence thresholds and how much conversation to read."""

    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    confirm_confidence: float = Field(default=0.85, ge=0.0, le=1.0)
    max_turns: int = Field(default=20, ge=1)


class ProfileSettings(_Section):
    """``[profile]``: the seed's keys, with the seed's defaults."""

    store_provider: str = "postgres"
    # Redis caching
    cache_enabled: bool = True
    cache_ttl_seconds: int = Field(default=1800, gt=0)
    field_definitions_ttl_seconds: int = Field(default=3600, gt=0)
    scenario_requirements_ttl_seconds: int = Field(default=3600, gt=0)
    # Schema validation
    validation_enabled: bool = True
    validation_strict: bool = False
    # Expiry management
    auto_expire_enabled: bool = True
    expire_check_interval_seconds: int = Field(default=300, gt=0)
    # Lineage
    lineage_tracking_enabled: bool = True
    max_derivation_chain_depth: int = Field(default=10, ge=1, le=1000)
    # Privacy
    auto_encrypt_pii: bool = True
    pii_encryption_key_id: str = "${PROFILE_PII_ENCRYPTION_KEY}"

    freshness: FreshnessSettings = Field(default_factory=FreshnessSettings)
    gap_fill: GapFillSettings = Field(default_factory=GapFillSettings)

    @field_validator("pii_encryption_key_id", mode="after")
    @classmethod
    def _expand(cls, value: str) -> str:
        return str(expand_env(value))

    def store_rules(self) -> StoreRules:
        """The settings that change what a store answers."""
        return StoreRules(
            max_derivation_chain_depth=self.max_derivation_chain_depth,
            default_freshness_seconds=self.freshness.default_freshness_seconds,
            stale_field_action=self.freshness.stale_field_action,
            lineage_tracking_enabled=self.lineage_tracking_enabled,
        )


class RedisSettings(_Section):
    """``[redis]``: where the cache lives and how long to wait for it."""

    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    key_prefix: str = ""
    socket_timeout_seconds: float = Field(default=0.25, gt=0)
    connect_timeout_seconds: float = Field(default=0.25, gt=0)
    retry_after_seconds: float = Field(default=1.0, ge=0)
    # hard bound on one whole cache operation (a cluster client may reconnect inside it)
    operation_timeout_seconds: float = Field(default=0.5, gt=0)


class MetricsSettings(_Section):
    """``[metrics]``: where ``ccvault metrics`` and the worker serve Prometheus metrics."""

    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)
    # how often `ccvault metrics` refreshes profile_fields_by_status from the store
    refresh_interval_seconds: float = Field(default=15.0, gt=0)


class WorkerSettings(_Section):
    """``[worker]``: how several ``ccvault worker`` processes keep out of each other's way."""

    # "redis": tenant claims in [redis] (any number of hosts); "postgres": advisory locks
    # in the postgres provider's database; "file": claim files in lease_dir (one host, no
    # servers); "auto": redis when the cache is on, else postgres on the postgres provider,
    # else file on sqlite/inmemory
    lease: Literal["auto", "redis", "postgres", "file"] = "auto"
    lease_dir: str = ".ccvault/leases"


_toml_data: ContextVar[dict[str, Any] | None] = ContextVar("ccvault_toml_data", default=None)


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file read by :func:`load_settings` (already ``${VAR}``-expanded)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_toml_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_toml_data.get() or {})


class VaultSettings(BaseSettings):
    """All settings of a vault: ``[profile]``, ``[providers.NAME]``, ``[redis]``, ``[metrics]``."""

    model_config = SettingsConfigDict(
        env_prefix="CCVAULT_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    profile: ProfileSettings = Field(default_factory=ProfileSettings)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    def provider_options(self, name: str) -> dict[str, Any]:
        """The raw ``[providers.NAME]`` table (empty when absent)."""
        return dict(self.providers.get(name, {}))


_TOP_LEVEL = set(VaultSettings.model_fields)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(exc: pydantic.ValidationError) -> str:
    problems = []
    for problem in exc.errors():
        key = ".".join(str(part) for part in problem["loc"])
        problems.append(f"{key}: {problem['msg']}")
    return "; ".join(problems)


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> VaultSettings:
    """The validated settings: defaults, then ``path`` (TOML), the environment, ``overrides``.

    ``overrides`` use ``[profile]`` key names (``store_provider="sqlite"``) or the names of
    whole tables (``providers={...}``, ``redis={...}``).
    """
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise errors.ConfigurationError(f"config file not found: {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise errors.ConfigurationError(
                f"config file {file} is not valid TOML: {exc}"
            ) from None
        unknown = sorted(set(data) - _TOP_LEVEL)
        if unknown:
            raise errors.ConfigurationError(
                f"config file {file}: unknown table(s) {unknown}; known: {sorted(_TOP_LEVEL)}"
            )
        data = expand_env(data)
    init: dict[str, Any] = {}
    profile_overrides = {k: v for k, v in overrides.items() if k not in _TOP_LEVEL}
    for key in _TOP_LEVEL & set(overrides):
        init[key] = overrides[key]
    if profile_overrides:
        # pydantic-settings deep-merges sources, so a partial table overrides only its keys
        init["profile"] = _deep_merge(init.get("profile", {}), profile_overrides)
    token = _toml_data.set(data)
    try:
        return VaultSettings(**init)
    except pydantic.ValidationError as exc:
        raise errors.ConfigurationError(f"invalid settings: {_describe(exc)}") from None
    finally:
        _toml_data.reset(token)
