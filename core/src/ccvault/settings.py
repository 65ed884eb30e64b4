"""Settings: built-in defaults (the seed's section 5), a TOML file, the environment.

Precedence, highest first: keyword overrides to :func:`load_settings`, environment variables
(``CCVAULT_PROFILE__CACHE_ENABLED=false``, ``CCVAULT_REDIS__URL=...``,
``CCVAULT_PROVIDERS__POSTGRES__DSN=...``), the TOML file, the built-in defaults. A TOML file
need only hold the keys it changes. ``${VAR}`` in any string value is replaced by that
environment variable (empty when unset). Everything is validated with pydantic at load; a bad
value raises :class:`~ccvault.errors.ConfigurationError` naming the key and the reason.

Secrets (the PII keyring, the Redis URL and password, providers' DSNs and URIs) are secret
types: ``repr``, ``str``, logs, errors and ``model_dump_json`` show them masked. Each can come
from a file, as container platforms provide them: ``${VAR}`` falls back to the contents of the
file named by ``VAR_FILE`` (``PROFILE_PII_ENCRYPTION_KEY_FILE``), and a secret key ``NAME``
of any table can be given as ``NAME_file`` (``CCVAULT_PROVIDERS__POSTGRES__DSN_FILE``,
``CCVAULT_REDIS__URL_FILE``, ``CCVAULT_REDIS__PASSWORD_FILE``, or ``dsn_file = "..."`` in
TOML). Setting both ``NAME`` and ``NAME_file`` (or ``VAR`` and ``VAR_FILE``) is an error.

No file is ever read from the working directory implicitly: :func:`load_settings` reads the
file it is given, and the CLI the one named by ``--config``, ``$CCVAULT_CONFIG`` or the system
path :data:`SYSTEM_CONFIG`. ``${CCVAULT_DATA_DIR}`` is the one variable with a default:
``$XDG_DATA_HOME/ccvault`` (``~/.local/share/ccvault``), where :func:`embedded_settings`
keeps its SQLite database and, when no keyring is configured, its generated local key.
Every load records which sources it used (:meth:`VaultSettings.sources`), by name only.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_serializer,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ccvault import errors
from ccvault.secretvalues import (
    SecretUrl,
    check_port,
    mask_options,
    read_secret_file,
    resolve_file_keys,
)
from ccvault.store_rules import StoreRules

__all__ = [
    "SYSTEM_CONFIG",
    "ExtractionSettings",
    "FreshnessSettings",
    "GapFillSettings",
    "LoggingSettings",
    "MetricsSettings",
    "ProfileSettings",
    "RedisSettings",
    "SecretUrl",
    "TracingSettings",
    "VaultSettings",
    "WorkerSettings",
    "data_dir",
    "embedded_settings",
    "expand_env",
    "load_settings",
]

logger = logging.getLogger("ccvault.settings")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: The system-wide settings file the CLI reads when neither ``--config`` nor
#: ``$CCVAULT_CONFIG`` names one (and only when it exists).
SYSTEM_CONFIG = Path("/etc/ccvault/ccvault.toml")

#: The one ``${VAR}`` with a default when unset: see :func:`data_dir`.
DATA_DIR_VAR = "CCVAULT_DATA_DIR"

# the names of the ${VAR} references (and VAR_FILE files) a load resolved: its sources
_refs_used: ContextVar[set[str] | None] = ContextVar("ccvault_refs_used", default=None)


def data_dir() -> Path:
    """Where embedded data lives: ``$CCVAULT_DATA_DIR``, else ``$XDG_DATA_HOME/ccvault``,
    else ``~/.local/share/ccvault``; never relative to the working directory."""
    explicit = os.environ.get(DATA_DIR_VAR)
    if explicit:
        return Path(explicit).expanduser().absolute()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser().absolute() / "ccvault"


def _env_value(name: str) -> str:
    """``$name``, else the contents of the file named by ``$name_FILE``, else empty
    (``$CCVAULT_DATA_DIR``: else :func:`data_dir`)."""
    value = os.environ.get(name)
    file = os.environ.get(f"{name}_FILE")
    used = _refs_used.get()
    if file is not None:
        if value is not None:
            raise errors.ConfigurationError(f"{name} and {name}_FILE are both set; set only one")
        if used is not None:
            used.add(f"{name}_FILE")
        return read_secret_file(file, source=f"{name}_FILE")
    if name == DATA_DIR_VAR and not value:
        return str(data_dir())
    if used is not None and value is not None:
        used.add(name)
    return value or ""


def expand_env(value: Any) -> Any:
    """Replace ``${VAR}`` in every string inside ``value`` by the environment's value (or
    the contents of the file named by ``VAR_FILE``)."""
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: _env_value(m.group(1)), value)
    if isinstance(value, dict):
        return {key: expand_env(item) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item) for item in value]
    return value


class _Section(BaseModel):
    # a bad value is never echoed in pydantic's errors: it may be a secret
    model_config = ConfigDict(extra="forbid", validate_default=True, hide_input_in_errors=True)


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

    # assigned secrets are wrapped too (tests and tools set the keyring after loading)
    model_config = ConfigDict(
        extra="forbid", validate_default=True, validate_assignment=True, hide_input_in_errors=True
    )

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
    # Size limits
    #: The largest field value (and the largest ``source_metadata``) a write accepts, in
    #: bytes of its JSON serialization (default 2 MiB: a 1 MiB text fits, escaping and all).
    #: A larger one is refused with a ValidationError before anything is written: one huge
    #: value must not slow every read of its profile, nor the cache for every tenant.
    max_field_value_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Privacy
    auto_encrypt_pii: bool = True
    #: The keyring ``KID:BASE64[,KID:BASE64...]`` (key material: a secret, shown masked).
    pii_encryption_key_id: SecretStr = SecretStr("${PROFILE_PII_ENCRYPTION_KEY}")
    #: Local use only (the embedded default): when encryption is on and no keyring is
    #: configured, read it from this file, generated (mode 0600) on first use. Empty: off.
    pii_local_key_path: str = ""

    @field_validator("pii_local_key_path", mode="before")
    @classmethod
    def _expand_path(cls, value: object) -> object:
        return expand_env(value)

    freshness: FreshnessSettings = Field(default_factory=FreshnessSettings)
    gap_fill: GapFillSettings = Field(default_factory=GapFillSettings)

    @field_validator("pii_encryption_key_id", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return expand_env(value)

    def store_rules(self) -> StoreRules:
        """The settings that change what a store answers."""
        return StoreRules(
            max_derivation_chain_depth=self.max_derivation_chain_depth,
            default_freshness_seconds=self.freshness.default_freshness_seconds,
            stale_field_action=self.freshness.stale_field_action,
            lineage_tracking_enabled=self.lineage_tracking_enabled,
            max_field_value_bytes=self.max_field_value_bytes,
        )


def _check_redis_url(url: str) -> None:
    """Refuse what redis-py would refuse only when it first connects (a bad query parameter,
    a database that is not a number), with one line naming the problem, never the URL."""
    scheme, _, rest = url.partition("://")
    if scheme != "unix":
        database = rest.partition("?")[0].partition("/")[2]
        if database and not database.isdigit():
            raise ValueError("url: the database (the path after the host) must be a number")
    try:
        import redis.asyncio as redis_asyncio
    except ImportError:  # pragma: no cover - redis is installed with the cache
        return
    try:
        client = redis_asyncio.from_url(url)
        client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    except TypeError as exc:
        unknown = re.search(r"unexpected keyword argument '([A-Za-z0-9_]+)'", str(exc))
        name = unknown.group(1) if unknown else "?"
        raise ValueError(f"url has an unknown query parameter {name!r}") from None
    except ValueError as exc:
        raise ValueError(f"url: {str(exc).rstrip('.')}") from None


class RedisSettings(_Section):
    """``[redis]``: where the cache lives and how long to wait for it."""

    #: The Redis URL; a password in it is a secret (shown masked).
    url: SecretUrl = SecretUrl("redis://127.0.0.1:6379/0")
    #: The Redis password when it is not in ``url`` (e.g. from ``CCVAULT_REDIS__PASSWORD_FILE``).
    password: SecretStr | None = None
    cluster: bool = False
    key_prefix: str = ""
    socket_timeout_seconds: float = Field(default=0.25, gt=0)
    connect_timeout_seconds: float = Field(default=0.25, gt=0)
    retry_after_seconds: float = Field(default=1.0, ge=0)
    # hard bound on one whole cache operation (a cluster client may reconnect inside it)
    operation_timeout_seconds: float = Field(default=0.5, gt=0)
    #: The largest cache entry (a profile body, a list of definitions...) in bytes: a larger
    #: one is served from the store and never cached (``ccvault_cache_oversized_total``), so
    #: one big profile cannot make cache fills time out for every tenant. Default 4 MiB.
    max_entry_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: Profiles kept decoded in process memory per vault process (0: off); how a kept copy
    #: is judged current is ``near_cache_invalidation``.
    near_cache_size: int = Field(default=1000, ge=0)
    #: How a near copy learns that its tenant changed. "check": one small GET per read
    #: proves no write of the tenant completed on any instance since (strict: a read after
    #: a completed write never sees old data). "push": Redis pushes invalidations to one
    #: dedicated connection (client tracking), and a near hit makes no Redis round trip; a
    #: write on another instance is seen here once its invalidation message has arrived
    #: (normally well under a millisecond after the writer's DEL, but not at the moment it
    #: returns); writes of this process are seen at once. Needs a non-cluster Redis >= 6.
    near_cache_invalidation: Literal["check", "push"] = "check"

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretUrl) -> SecretUrl:
        url = value.get_secret_value()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must be a redis://, rediss:// or unix:// URL")
        try:
            check_port(url)
        except ValueError as exc:
            raise ValueError(f"url {exc}") from None
        _check_redis_url(url)
        return value

    def connection_url(self) -> str:
        """The URL to connect with, ``password`` merged in: only for the code that connects."""
        url = self.url.get_secret_value()
        if self.password is None:
            return url
        secret = quote(self.password.get_secret_value(), safe="")
        scheme, sep, rest = url.partition("://")
        if scheme == "unix":  # unix:///path/redis.sock?db=0: the password is a query parameter
            return f"{url}{'&' if '?' in url else '?'}password={secret}"
        authority, slash, tail = rest.partition("/")
        user = authority.rpartition("@")[0].partition(":")[0] if "@" in authority else ""
        host = authority.rpartition("@")[2]
        return f"{scheme}{sep}{user}:{secret}@{host}{slash}{tail}"


class MetricsSettings(_Section):
    """``[metrics]``: where ``ccvault metrics`` and the worker serve Prometheus metrics."""

    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)
    # how often `ccvault metrics` refreshes profile_fields_by_status from the store
    refresh_interval_seconds: float = Field(default=15.0, gt=0)
    #: false: every ``tenant_id`` label value is ``"_all"`` (one series per metric for all
    #: tenants, for deployments with many tenants)
    tenant_labels: bool = True
    #: process and platform metrics (CPU, memory, open files, Python version) on the registry
    process_metrics: bool = True


class TracingSettings(_Section):
    """``[tracing]``: OpenTelemetry spans per public store operation (``ccvault.tracing``;
    needs the ``otel`` extra). Spans carry the operation, provider, outcome and error type,
    never personal data; they go to the tracer provider the application configures."""

    #: true: one span ``ccvault.<operation>`` per public store call (applied by open_store)
    enabled: bool = False
    #: true: spans also carry the ``ccvault.tenant_id`` attribute
    tenant_ids: bool = False


class LoggingSettings(_Section):
    """``[logging]``: how the CLI logs on stderr (``--log-format`` overrides ``format``)."""

    #: "text": one human-readable line per record; "json": one JSON object per line
    format: Literal["text", "json"] = "text"
    #: the level without ``-v`` (``-v``: INFO)
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"


class WorkerSettings(_Section):
    """``[worker]``: how several ``ccvault worker`` processes keep out of each other's way."""

    # "redis": tenant claims in [redis] (any number of hosts); "file": claim files in
    # lease_dir (one host, no servers); another name: a lease a provider contributes through
    # the ccvault_worker_lease hook (e.g. "postgres": claim rows in its database);
    # "auto": redis when the cache is on, else the provider's own lease, else file on a
    # single-host provider (see ccvault.worker.lease_from_settings)
    lease: str = Field(default="auto", pattern=r"^[a-z][a-z0-9_]*$", max_length=50)
    lease_dir: str = "${CCVAULT_DATA_DIR}/leases"
    #: rows per batch of the bulk jobs (expire, mark-orphans) the worker and the CLI run:
    #: each batch is one short transaction, so no statement grows with the tenant
    batch_size: int = Field(default=1_000, ge=1, le=100_000)

    @field_validator("lease_dir", mode="before")
    @classmethod
    def _expand_dir(cls, value: object) -> object:
        return expand_env(value)


class OpenAIExtractionSettings(_Section):
    """``[extraction.openai]``: an OpenAI-compatible ``/chat/completions`` endpoint."""

    base_url: str = ""
    model: str = ""
    #: The API key (a secret, shown masked); ``api_key = "${OPENAI_API_KEY}"`` reads it from
    #: the environment, ``CCVAULT_EXTRACTION__OPENAI__API_KEY_FILE`` from a file.
    api_key: SecretStr | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    json_mode: bool = True


class ExtractionSettings(_Section):
    """``[extraction]``: the extractor gap fill uses and how much customer text it reads.

    A message longer than ``max_message_chars``, or a conversation (the turns extraction
    reads) longer than ``max_conversation_chars``, is refused with a ValidationError.
    """

    extractor: Literal["offline", "openai"] = "offline"
    max_message_chars: int = Field(default=20_000, ge=1)
    max_conversation_chars: int = Field(default=100_000, ge=1)
    #: ISO 3166 region for national-format phone numbers (offline extractor), e.g. "US"
    default_region: str | None = None
    openai: OpenAIExtractionSettings = Field(default_factory=OpenAIExtractionSettings)


_toml_data: ContextVar[dict[str, Any] | None] = ContextVar("ccvault_toml_data", default=None)


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file read by :func:`load_settings` (already ``${VAR}``-expanded)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_toml_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_toml_data.get() or {})


class _EnvFilesSource(PydanticBaseSettingsSource):
    """The environment, with ``CCVAULT_..._FILE`` secrets read from their files."""

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._env.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return resolve_file_keys(self._env(), where="")


class VaultSettings(BaseSettings):
    """All settings of a vault: ``[profile]``, ``[providers.NAME]``, ``[redis]``, ``[metrics]``."""

    model_config = SettingsConfigDict(
        env_prefix="CCVAULT_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        hide_input_in_errors=True,
    )

    profile: ProfileSettings = Field(default_factory=ProfileSettings)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    extraction: ExtractionSettings = Field(default_factory=ExtractionSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    # where these settings came from, by name only (never a value): see sources()
    _sources: list[str] = PrivateAttr(default_factory=list)

    def sources(self) -> list[str]:
        """The sources of these settings, highest precedence last, by name only: the file,
        the environment variables read, a generated or read local key file."""
        return list(self._sources)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            _EnvFilesSource(settings_cls, env_settings),
            _TomlSource(settings_cls),
        )

    def provider_options(self, name: str) -> dict[str, Any]:
        """The raw ``[providers.NAME]`` table (empty when absent)."""
        return dict(self.providers.get(name, {}))

    @field_serializer("providers")
    def _mask_providers(self, providers: dict[str, dict[str, Any]]) -> dict[str, Any]:
        # DSNs and URIs of the raw provider tables never reach a dump unmasked (the raw
        # values are read with provider_options)
        return mask_options(providers)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (mask_options(value) if name == "providers" else value)


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
    sources = ["built-in defaults"]
    used: set[str] = set()
    token_refs = _refs_used.set(used)
    try:
        if path is not None:
            file = Path(path)
            try:
                data = tomllib.loads(file.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise errors.ConfigurationError(f"config file not found: {file}") from None
            except IsADirectoryError:
                raise errors.ConfigurationError(f"config file is a directory: {file}") from None
            except PermissionError:
                raise errors.ConfigurationError(f"config file not readable: {file}") from None
            except tomllib.TOMLDecodeError as exc:
                raise errors.ConfigurationError(
                    f"config file {file} is not valid TOML: {exc}"
                ) from None
            sources.append(f"file {file.absolute()}")
            data = _checked_file_data(data, str(file))
        return _load(data, sources, used, overrides)
    finally:
        _refs_used.reset(token_refs)


def _checked_file_data(data: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise errors.ConfigurationError(
            f"config file {where}: unknown table(s) {unknown}; known: {sorted(_TOP_LEVEL)}"
        )
    resolved: dict[str, Any] = resolve_file_keys(expand_env(data), where="")
    return resolved


#: The embedded configuration (also ``config/embedded.toml``): SQLite under
#: ``${CCVAULT_DATA_DIR}``, no Redis, PII encryption on with a generated local key when none
#: is configured.
EMBEDDED: dict[str, Any] = {
    "profile": {
        "store_provider": "sqlite",
        "cache_enabled": False,
        "pii_local_key_path": "${CCVAULT_DATA_DIR}/pii.key",
    },
    # a local single-user file: no separate migration role, so opening migrates it
    "providers": {"sqlite": {"path": "${CCVAULT_DATA_DIR}/vault.db", "migrate_on_start": True}},
    "worker": {"lease_dir": "${CCVAULT_DATA_DIR}/leases"},
}


def embedded_settings(**overrides: Any) -> VaultSettings:
    """The embedded settings, from any working directory: SQLite in
    ``$CCVAULT_DATA_DIR/vault.db`` (default ``~/.local/share/ccvault``), no cache, PII
    encryption on. The keyring comes from ``PROFILE_PII_ENCRYPTION_KEY`` when set, else from
    ``$CCVAULT_DATA_DIR/pii.key``, generated (mode 0600) on first use with a warning: that
    key is for local use only. Then the environment and ``overrides``, as in
    :func:`load_settings`."""
    used: set[str] = set()
    token_refs = _refs_used.set(used)
    try:
        data = _checked_file_data(EMBEDDED, "embedded")
        return _load(data, ["built-in defaults", "embedded defaults"], used, overrides)
    finally:
        _refs_used.reset(token_refs)


def _load(
    data: dict[str, Any], sources: list[str], used: set[str], overrides: dict[str, Any]
) -> VaultSettings:
    init: dict[str, Any] = {}
    profile_overrides = {k: v for k, v in overrides.items() if k not in _TOP_LEVEL}
    for key in _TOP_LEVEL & set(overrides):
        init[key] = overrides[key]
    if profile_overrides:
        # pydantic-settings deep-merges sources, so a partial table overrides only its keys
        init["profile"] = _deep_merge(init.get("profile", {}), profile_overrides)
    token = _toml_data.set(data)
    try:
        settings = VaultSettings(**init)
    except pydantic.ValidationError as exc:
        raise errors.ConfigurationError(f"invalid settings: {_describe(exc)}") from None
    finally:
        _toml_data.reset(token)
    environment = sorted(
        name
        for name in os.environ
        if name.startswith("CCVAULT_")
        and name not in ("CCVAULT_CONFIG", DATA_DIR_VAR)
        and not name.startswith("CCVAULT_TEST")
    )
    named = sorted(used | ({DATA_DIR_VAR} if os.environ.get(DATA_DIR_VAR) else set()))
    if environment or named:
        sources.append(f"environment {', '.join(sorted(set(environment) | set(named)))}")
    if overrides:
        sources.append(f"keyword overrides {', '.join(sorted(overrides))}")
    local = _local_key(settings)
    if local is not None:
        sources.append(local)
    settings._sources = sources
    return settings


_LOCAL_KID = "local"


def _local_key(settings: VaultSettings) -> str | None:
    """Fill an empty keyring from ``pii_local_key_path`` (generated on first use); return
    the source it describes, or None when it does not apply."""
    profile = settings.profile
    if not (profile.auto_encrypt_pii and profile.pii_local_key_path):
        return None
    if profile.pii_encryption_key_id.get_secret_value().strip():
        return None
    path = Path(profile.pii_local_key_path).expanduser()
    generated = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            # written whole under a private name, then linked into place: a concurrent
            # starter either wins the link or reads the winner's complete key
            entry = f"{_LOCAL_KID}:{base64.b64encode(os.urandom(32)).decode()}"
            draft = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(entry + "\n")
                os.link(draft, path)
                generated = True
            except FileExistsError:
                pass
            finally:
                draft.unlink(missing_ok=True)
        if os.name == "posix" and path.stat().st_mode & 0o077:
            raise errors.ConfigurationError(
                f"profile.pii_local_key_path {path} is readable by other users; "
                f"chmod 600 it (it holds the PII key)"
            )
        keyring = read_secret_file(str(path), source="profile.pii_local_key_path")
    except OSError as exc:
        raise errors.ConfigurationError(
            f"profile.pii_local_key_path: cannot use {path} ({exc.strerror or exc})"
        ) from None
    if generated:
        logger.warning(
            "generated a PII encryption key in %s (mode 0600) for this local store: for local "
            "use only; production takes PROFILE_PII_ENCRYPTION_KEY (see docs/operations.md). "
            "Without this file the encrypted values cannot be read.",
            path,
        )
    profile.pii_encryption_key_id = SecretStr(keyring)
    return f"{'generated ' if generated else ''}local key file {path}"
