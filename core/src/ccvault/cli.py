"""The ``ccvault`` operator command line (``python -m ccvault`` does the same).

Every command reads the same settings: ``--config FILE``, else ``$CCVAULT_CONFIG``, else
``/etc/ccvault/ccvault.toml`` when it exists, else the built-in defaults; then the
environment (``CCVAULT_PROFILE__...``, ``${VAR}`` references). Nothing is read from the
working directory unless named. Every command logs the sources it used (INFO, ``-v``).
Global options (``--config``, ``-v``, ``--json``, ``--log-format``) work before or after the
subcommand. On failure a command prints one line, ``ccvault: error: REASON`` (with
``--json``: one JSON object), on stderr and exits with the code of :data:`EXIT_CODES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from stat import S_ISREG
from typing import Any, Literal, NoReturn, TypeVar
from uuid import UUID

from ccvault import errors
from ccvault.batches import MAX_BATCH_SIZE, BatchProgress
from ccvault.extras import requires_extra
from ccvault.migration import SchemaStatus, SchemaStep
from ccvault.models import Channel, CustomerProfile, ItemStatus
from ccvault.rules.erasure import ErasureReport
from ccvault.settings import SYSTEM_CONFIG, VaultSettings, embedded_settings, load_settings
from ccvault.store import ProfileStore

with requires_extra("cli", "The ccvault command"):
    import click
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table
    from rich.text import Text

__all__ = ["EXIT_CODES", "cli", "main"]

logger = logging.getLogger("ccvault.cli")

#: Exit codes, by what went wrong (documented in ``ccvault --help`` and the README).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_VALIDATION = 5
EXIT_CONFIGURATION = 6
EXIT_UNAVAILABLE = 7

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok",
    EXIT_ERROR: "error (any other failure: storage, encryption, a failed tenant, rotate-keys "
    "completed with errors...)",
    EXIT_USAGE: "usage (bad option or argument)",
    EXIT_NOT_FOUND: "not found (profile, item, definition)",
    EXIT_CONFLICT: "conflict (identity taken, active field exists, dependents)",
    EXIT_VALIDATION: "validation (a value or argument the vault refuses)",
    EXIT_CONFIGURATION: "configuration (settings, config file, keys, provider, Redis URL)",
    EXIT_UNAVAILABLE: "unavailable (the database or Redis cannot be reached)",
}

#: error class -> (exit code, kind), the first match in this order
_ERROR_KINDS: tuple[tuple[type[BaseException], int, str], ...] = (
    (errors.NotFoundError, EXIT_NOT_FOUND, "not_found"),
    (errors.ConflictError, EXIT_CONFLICT, "conflict"),
    (errors.ValidationError, EXIT_VALIDATION, "validation"),
    (errors.ConfigurationError, EXIT_CONFIGURATION, "configuration"),
    # a schema newer than this code: a deployment mismatch, as SchemaNotReadyError
    (errors.SchemaVersionError, EXIT_CONFIGURATION, "configuration"),
    (errors.ProviderUnavailableError, EXIT_UNAVAILABLE, "unavailable"),
    (errors.EncryptionError, EXIT_ERROR, "encryption"),
    (errors.VaultError, EXIT_ERROR, "error"),
)

_T = TypeVar("_T")


# Control characters (C0, DEL, C1: terminal escape sequences), invisible and bidi-override
# characters: customer strings never reach the operator's terminal with them
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\u2060-\u2064\u2066-\u2069\ufeff]"
)
# the same, inside JSON text: C0 is already escaped by the encoder (raw ones are layout)
_UNSAFE_IN_JSON = re.compile(
    "[\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\u2060-\u2064\u2066-\u2069\ufeff]"
)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _safe(value: object) -> str:
    """``value`` as text with every control or invisible character shown as an escape."""
    return _UNSAFE.sub(_escape_char, str(value))


def _safe_json(text: str) -> str:
    """JSON text with the same characters as JSON ``\\uXXXX`` escapes (the same JSON)."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _cell(value: object) -> Text:
    """A table cell or line: plain text, never rich markup, never a control character."""
    return Text(_safe(value))


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600, also when the file
    existed with a wider mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        # a regular file only: `-o /dev/stdout` (a pipe, a terminal) is left as it is
        if hasattr(os, "fchmod") and S_ISREG(os.fstat(handle.fileno()).st_mode):
            os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def _one_line(exc: BaseException) -> str:
    text = _safe(" ".join(str(exc).split()))
    return text or type(exc).__name__


def error_kind(exc: BaseException) -> tuple[int, str]:
    """The exit code and the kind (``not_found``, ``unavailable``...) of an error."""
    for cls, code, kind in _ERROR_KINDS:
        if isinstance(exc, cls):
            return code, kind
    return EXIT_ERROR, "error"


# global options: flags, and options taking a value (hoisted before the subcommand)
_GLOBAL_FLAGS = frozenset({"-v", "--verbose", "--json"})
_GLOBAL_VALUED = frozenset({"-c", "--config", "--log-format"})


def _hoist_global_options(group: click.Group, args: list[str]) -> list[str]:
    """``args`` with every global option written after the subcommand moved in front of it,
    unless the (sub)command has an option of that name itself (``eval sgd --config``,
    ``profile show --json``): those stay where they are and the command reads both."""
    front: list[str] = []
    rest: list[str] = []
    command: click.Command = group
    own: dict[str, bool] = {}  # the current command's options -> takes a value
    inside = False  # past the first subcommand name
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if token == "--":
            rest.append(token)
            rest.extend(args[index:])
            break
        name, has_value, _ = token.partition("=")
        if not inside:
            if token.startswith("-"):
                front.append(token)
                if name in _GLOBAL_VALUED and not has_value and index < len(args):
                    front.append(args[index])
                    index += 1
                continue
        if token.startswith("-") and name in own:
            rest.append(token)
            if own[name] and not has_value and index < len(args):
                rest.append(args[index])
                index += 1
            continue
        if token.startswith("-") and name in _GLOBAL_FLAGS:
            front.append(token)
            continue
        if token.startswith("-") and name in _GLOBAL_VALUED:
            front.append(token)
            if not has_value and index < len(args):
                front.append(args[index])
                index += 1
            continue
        if not token.startswith("-") and isinstance(command, click.Group):
            sub = command.commands.get(token)
            if sub is not None:
                command, inside = sub, True
                own = {
                    opt: not (param.is_flag or param.count)
                    for param in sub.params
                    if isinstance(param, click.Option)
                    for opt in (*param.opts, *param.secondary_opts)
                }
        rest.append(token)
    return front + rest


class _VaultGroup(click.Group):
    """The root group: global options in any position; every error as one line on stderr
    (``--json``: one JSON object) and its exit code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = _hoist_global_options(self, args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.VaultError as exc:
            code, kind = error_kind(exc)
            _report_error(ctx, kind, _one_line(exc), code)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one line, not a traceback (which may quote data)
            logger.debug("unexpected error", exc_info=True)
            _report_error(
                ctx,
                "error",
                f"unexpected {type(exc).__name__} (its message is not shown: it may quote "
                'data; [logging] level = "DEBUG" logs the traceback)',
                EXIT_ERROR,
            )


def _report_error(ctx: click.Context, kind: str, message: str, code: int) -> NoReturn:
    env = ctx.find_object(_Env)
    if env is not None and env.json:
        document = {"error": {"kind": kind, "message": message, "exit_code": code}}
        click.echo(json.dumps(document, ensure_ascii=False), err=True)
    else:
        click.echo(f"ccvault: error: {message}", err=True)
    ctx.exit(code)


class _Env:
    """What the group passes to its commands: how to get the settings, the global flags."""

    def __init__(
        self,
        config: Path | None,
        config_source: str,
        *,
        as_json: bool = False,
        verbose: bool = False,
        log_format: str | None = None,
    ) -> None:
        self.config = config
        self.config_source = config_source  # "--config", "CCVAULT_CONFIG" or "system path"
        self.json = as_json
        self.verbose = verbose
        self.log_format = log_format

    def settings(self, *, embedded: bool = False) -> VaultSettings:
        """The settings of this run: the config file named (or the system one), else the
        built-in defaults; ``embedded``: the embedded defaults when no file is named."""
        if self.config is not None:
            settings = load_settings(self.config)
            where = f"config file {self.config} (from {self.config_source})"
        elif embedded:
            settings = embedded_settings()
            where = "no config file: embedded defaults (--config or CCVAULT_CONFIG to change)"
        else:
            settings = load_settings(None)
            where = (
                f"no config file (--config, CCVAULT_CONFIG, or {SYSTEM_CONFIG}): built-in defaults"
            )
        self.apply_logging(settings)
        from ccvault import metrics

        metrics.configure(
            tenant_labels=settings.metrics.tenant_labels,
            process_metrics=settings.metrics.process_metrics,
        )
        logger.info("settings: %s; sources: %s", where, "; ".join(settings.sources()))
        return settings

    def apply_logging(self, settings: VaultSettings | None = None) -> None:
        from ccvault import logs

        fmt = self.log_format or (settings.logging.format if settings else "text")
        level = "INFO" if self.verbose else (settings.logging.level if settings else "WARNING")
        logs.configure("json" if fmt == "json" else "text", level)
        logging.getLogger("ccvault").setLevel(logging.NOTSET)  # the root's level applies


def _env(ctx: click.Context) -> _Env:
    env = ctx.find_object(_Env)
    assert env is not None
    return env


def _settings(ctx: click.Context) -> VaultSettings:
    return _env(ctx).settings()


def _wants_json(ctx: click.Context, own: bool = False) -> bool:
    return own or _env(ctx).json


def _echo_json(document: Any) -> None:
    click.echo(_safe_json(json.dumps(document, indent=2, ensure_ascii=False, default=str)))


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coro)


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _out_console() -> Console:
    console = Console()
    # piped or captured output is not cut at 80 columns: values must stay whole
    return console if console.is_terminal else Console(width=240)


def _err_console() -> Console:
    # progress bars go to stderr so stdout stays clean for JSON and tables
    return Console(stderr=True)


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        _report_error(ctx, "error", message, code)
    click.echo(f"ccvault: error: {message}", err=True)
    sys.exit(code)


class _UUIDType(click.ParamType[UUID, Any]):
    name = "uuid"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> UUID:
        if isinstance(value, UUID):
            return value
        try:
            return UUID(str(value))
        except ValueError:
            # the value is not echoed: a mistyped argument may be personal data
            self.fail("not a UUID", param, ctx)


UUID_TYPE = _UUIDType()


_EPILOG = (
    "Settings: --config FILE, else $CCVAULT_CONFIG, else "
    f"{SYSTEM_CONFIG} if it exists, else the built-in defaults; then the environment "
    "(CCVAULT_<TABLE>__<KEY>). Never a file of the working directory unless named. "
    "Global options (--config, -v, --json, --log-format) work before or after the "
    "subcommand.\n\nExit codes: "
    + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
    + "."
)


@click.group(
    cls=_VaultGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=_EPILOG,
)
@click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"TOML settings file (else $CCVAULT_CONFIG, else {SYSTEM_CONFIG} if it exists, else "
    "built-in defaults).",
)
@click.option("--verbose", "-v", is_flag=True, help="Log at INFO level on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Reports and errors as JSON.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text or one JSON object each (default: [logging] format).",
)
@click.version_option(package_name="ccvault", prog_name="ccvault")
@click.pass_context
def cli(
    ctx: click.Context,
    config: Path | None,
    verbose: bool,
    as_json: bool,
    log_format: str | None,
) -> None:
    """ccvault: the Customer Context Vault operator tool."""
    source = "--config"
    if config is None and os.environ.get("CCVAULT_CONFIG"):
        config, source = Path(os.environ["CCVAULT_CONFIG"]), "CCVAULT_CONFIG"
    elif config is None and SYSTEM_CONFIG.is_file():
        config, source = SYSTEM_CONFIG, "system path"
    if source == "CCVAULT_CONFIG":
        # commands that read the root's parameter (eval sgd) see the variable's file too;
        # the system path is not named by the operator: they do not see it
        ctx.params["config"] = config
    ctx.obj = _Env(config, source, as_json=as_json, verbose=verbose, log_format=log_format)
    ctx.obj.apply_logging()


# -----------------------------------------------------------------------------------------
# providers, demo, keygen
# -----------------------------------------------------------------------------------------


@cli.command()
@click.pass_context
def providers(ctx: click.Context) -> None:
    """List the installed storage providers with their distribution and version."""
    from ccvault.registry import installed_providers

    found = installed_providers()
    if not found:
        _fail("no storage provider is installed; pip install ccvault-sqlite (for example)")
    if _wants_json(ctx):
        _echo_json(
            [
                {"provider": i.name, "distribution": i.distribution, "version": i.version}
                for i in found.values()
            ]
        )
        return
    table = Table("provider", "distribution", "version", title="Installed storage providers")
    for item in found.values():
        table.add_row(item.name, item.distribution, item.version)
    _out_console().print(table)


#: the providers ``demo`` writes into without --allow-non-embedded
EMBEDDED_PROVIDERS = frozenset({"sqlite", "inmemory"})


@cli.command()
@click.option(
    "--allow-non-embedded",
    is_flag=True,
    help="Write the demo tenant even into a store that is not embedded (sqlite, inmemory).",
)
@click.pass_context
def demo(ctx: click.Context, allow_non_embedded: bool) -> None:
    """Run a short end-to-end story on the embedded store and print it.

    Settings: --config or $CCVAULT_CONFIG if given, else the embedded defaults (SQLite in
    $CCVAULT_DATA_DIR, default ~/.local/share/ccvault, with a generated local key when
    PROFILE_PII_ENCRYPTION_KEY is unset). A store other than sqlite or inmemory is refused
    unless --allow-non-embedded: the demo writes a demo tenant.
    """
    from ccvault.demo import run_demo

    env = _env(ctx)
    explicit = env.config is not None and env.config_source != "system path"
    settings = env.settings(embedded=not explicit)
    provider = settings.profile.store_provider
    if provider not in EMBEDDED_PROVIDERS and not allow_non_embedded:
        raise errors.ConfigurationError(
            f"demo writes a demo tenant and the configured store is {provider!r}, not "
            "embedded; run it without --config, or pass --allow-non-embedded"
        )
    _run(run_demo(settings, Console()))


@cli.command()
@click.argument("kid")
@click.pass_context
def keygen(ctx: click.Context, kid: str) -> None:
    """Print a fresh PII keyring entry KID:BASE64 (append it to PROFILE_PII_ENCRYPTION_KEY
    with a comma, then run rotate-keys)."""
    from ccvault.crypto import generate_key_entry

    entry = generate_key_entry(kid)
    if _wants_json(ctx):
        _echo_json({"kid": kid, "entry": entry})
    else:
        click.echo(entry)


# -----------------------------------------------------------------------------------------
# store operations
# -----------------------------------------------------------------------------------------


async def redis_problem(settings: VaultSettings) -> tuple[str, str] | None:
    """Why the configured Redis cannot serve as the cache — ``("auth", reason)``,
    ``("unavailable", reason)`` — or None when it answers PING. Reasons name the masked URL
    and the error type, never a password."""
    with requires_extra("cache", "Checking the Redis cache"):
        from redis import exceptions as redis_errors

    config = settings.redis
    where = config.url.masked()
    try:
        if config.cluster:
            from redis.asyncio.cluster import RedisCluster

            client: Any = RedisCluster.from_url(
                config.connection_url(),
                socket_timeout=config.socket_timeout_seconds,
                socket_connect_timeout=config.connect_timeout_seconds,
            )
        else:
            from redis.asyncio import Redis

            client = Redis.from_url(
                config.connection_url(),
                socket_timeout=config.socket_timeout_seconds,
                socket_connect_timeout=config.connect_timeout_seconds,
            )
    except (ValueError, TypeError, redis_errors.RedisError) as exc:
        return "unavailable", f"Redis at {where}: {type(exc).__name__}"
    try:
        async with asyncio.timeout(config.operation_timeout_seconds * 4):
            await client.ping()
    except redis_errors.AuthenticationError:
        return "auth", f"Redis at {where} refused the credentials (wrong password or user)"
    except redis_errors.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "AUTH" in str(exc):
            return "auth", f"Redis at {where} refused the credentials (wrong password or user)"
        return "unavailable", f"Redis at {where} answered PING with an error"
    except (redis_errors.RedisError, OSError, TimeoutError) as exc:
        return "unavailable", f"cannot reach Redis at {where} ({type(exc).__name__})"
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    return None


async def push_tracking_problem(settings: VaultSettings) -> tuple[str, str] | None:
    """Why ``[redis] near_cache_invalidation = "push"`` would act as ``"check"`` on the
    configured Redis — ``("refused", reason)``: a cluster, ``INFO`` refused, or a refused step
    of the cache's own tracking handshake (:func:`ccvault.cache.tracking_handshake`: an ACL
    without them, a Redis older than 6); ``("unavailable", reason)``: no answer in time — or
    None when such a session opens (or push mode is off: no near tier). Runs the handshake on
    a connection of its own, closed after, with the cache's budget
    (:func:`ccvault.cache.tracking_open_budget`), then the SET of a session marker as the
    cache writes one. Reasons name the masked URL (its user name, never
    its password), the step and the error's class."""
    with requires_extra("cache", "Checking the Redis cache"):
        from redis import exceptions as redis_errors
        from redis.asyncio import Redis

        from ccvault.cache import tracking_handshake, tracking_open_budget

    config = settings.redis
    where = config.url.masked()
    if config.near_cache_invalidation != "push" or config.near_cache_size <= 0:
        return None  # no near tier in push mode: nothing to check
    if config.cluster:
        return "refused", "near_cache_invalidation = 'push' needs a plain Redis, not a cluster"
    client = Redis.from_url(
        config.connection_url(),
        socket_timeout=config.socket_timeout_seconds,
        socket_connect_timeout=config.connect_timeout_seconds,
        protocol=2,
    )
    pool = client.connection_pool
    connection: Any = pool.connection_class(**pool.connection_kwargs)
    steps = ["connecting"]
    try:
        # the cache's own budget and steps, its session marker's SET included
        async with asyncio.timeout(tracking_open_budget(config.operation_timeout_seconds)):
            await connection.connect()
            _, tag = await tracking_handshake(connection, config.key_prefix, steps)
            steps.append("SET (the session marker)")
            await client.set(f"{config.key_prefix}near-session:config-check", "1", px=10_000)
    except redis_errors.ResponseError as exc:
        return "refused", (
            f"Redis at {where} refused {steps[-1]} ({type(exc).__name__}): "
            "near_cache_invalidation = 'push' acts as 'check' (one GET per near hit); see "
            "docs/operations.md (Redis, ACL)"
        )
    except (redis_errors.RedisError, OSError, TimeoutError) as exc:
        return "unavailable", (
            f"no tracking session on Redis at {where}: {steps[-1]} got no answer "
            f"({type(exc).__name__})"
        )
    finally:
        with contextlib.suppress(Exception):
            await connection.disconnect(nowait=True)
        with contextlib.suppress(Exception):
            await client.aclose()
    if tag is None:
        return "refused", (
            f"Redis at {where} refused INFO: near_cache_invalidation = 'push' acts as 'check' "
            "(one GET per near hit); see docs/operations.md (Redis, ACL)"
        )
    return None


async def _with_store(settings: VaultSettings, work: Callable[[ProfileStore], Awaitable[_T]]) -> _T:
    from ccvault.registry import open_store

    if settings.profile.cache_enabled:
        problem = await redis_problem(settings)
        if problem is not None:
            # the cache would bypass itself silently: say so once, per command
            logger.warning("%s: the cache is bypassed, every read goes to the store", problem[1])
    async with open_store(settings) as store:
        return await work(store)


def _step_json(step: SchemaStep, *, sql: bool = False) -> dict[str, Any]:
    document: dict[str, Any] = {"version": step.version, "description": step.description}
    if sql:
        document["statements"] = list(step.statements)
    return document


def _status_json(provider: str, status: SchemaStatus) -> dict[str, Any]:
    return {
        "provider": provider,
        "location": status.location,
        "current": status.current,
        "latest": status.latest,
        "pending": [_step_json(step) for step in status.pending],
        "up_to_date": status.up_to_date,
        "newer": status.newer,
    }


async def _schema_call(
    settings: VaultSettings, call: Callable[[ProfileStore], Awaitable[_T]]
) -> _T:
    """``call`` on the configured provider's store, unopened and unwrapped: the schema calls
    connect for themselves (``setup()`` would refuse an unmigrated schema)."""
    from ccvault.registry import create_store

    store = create_store(settings)
    try:
        return await call(store)
    finally:
        await store.aclose()


@cli.command()
@click.option(
    "--status",
    "show_status",
    is_flag=True,
    help="Only report the schema version (current, latest, pending); change nothing. "
    "Exits 6 when migrations are pending or the schema is newer than this code.",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the statements migrating would run; change nothing."
)
@click.pass_context
def migrate(ctx: click.Context, show_status: bool, dry_run: bool) -> None:
    """Create or upgrade the storage schema: the ONLY command that changes it (starting the
    vault never does). Run it with a role allowed to change the schema, before starting
    the new version. Idempotent; concurrent runs are serialized, the later ones apply
    nothing. Reports the migrations it applied (``--json``: one object)."""
    if show_status and dry_run:
        raise click.UsageError("give at most one of --status and --dry-run")
    settings = _settings(ctx)
    provider = settings.profile.store_provider
    as_json = _wants_json(ctx)
    if show_status:
        status = _run(_schema_call(settings, lambda store: store.schema_status()))
        if as_json:
            _echo_json(_status_json(provider, status))
        else:
            where = f" ({status.location})" if status.location else ""
            click.echo(_safe(f"{provider} store{where}: schema version {status.current}"))
            click.echo(f"latest known version: {status.latest}")
            if status.newer:
                click.echo("the schema is NEWER than this ccvault: upgrade ccvault")
            elif status.pending:
                click.echo(f"pending: {len(status.pending)} migration(s)")
                for step in status.pending:
                    click.echo(_safe(f"  {step.version}: {step.description}"))
            else:
                click.echo("up to date")
        if not status.up_to_date:
            ctx.exit(EXIT_CONFIGURATION)
        return
    if dry_run:
        report = _run(_schema_call(settings, lambda store: store.migrate(dry_run=True)))
        if as_json:
            document = _status_json(provider, report.status)
            document["dry_run"] = True
            document["preamble"] = list(report.preamble)
            document["would_apply"] = [_step_json(s, sql=True) for s in report.applied]
            _echo_json(document)
            return
        if not report.applied:
            click.echo(f"-- the schema of the {provider} store is up to date: nothing to run")
            return
        click.echo(f"-- dry run: ccvault migrate would run, in ONE transaction ({provider})")
        for statement in report.preamble:
            click.echo(_safe(f"{statement};"))
        for step in report.applied:
            click.echo(_safe(f"-- migration {step.version}: {step.description}"))
            for statement in step.statements:
                click.echo(_safe(statement.rstrip().rstrip(";") + ";"))
        return
    with _err_console().status(f"migrating the {provider} store"):
        report = _run(_schema_call(settings, lambda store: store.migrate()))
    status = report.status
    if as_json:
        document = _status_json(provider, status)
        document["applied"] = [_step_json(s) for s in report.applied]
        document["status"] = "applied" if report.applied else "up to date"
        _echo_json(document)
        return
    for step in report.applied:
        click.echo(_safe(f"applied migration {step.version}: {step.description}"))
    if report.applied:
        click.echo(
            f"applied {len(report.applied)} migration(s); the schema of the {provider} store "
            f"is at version {status.current}"
        )
    else:
        click.echo(f"schema of the {provider} store is up to date (version {status.current})")


async def _tenants(store: ProfileStore, tenant: tuple[UUID, ...]) -> list[UUID]:
    return list(tenant) if tenant else await store.list_tenant_ids()


def _batch_size_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--batch-size",
        type=click.IntRange(1, MAX_BATCH_SIZE),
        default=None,
        help="Rows per batch, each its own transaction (default: [worker] batch_size).",
    )(func)


class _BulkRun:
    """A bulk job over several tenants: a progress line per tenant on stderr (rows done,
    rate, ETA), and the per-tenant summary (rows, batches, seconds, rate) for the report."""

    def __init__(self, job: str, title: str, batch_size: int) -> None:
        self.job = job
        self.title = title
        self.batch_size = batch_size
        self.tenants: dict[UUID, dict[str, Any]] = {}

    async def run(
        self,
        store: ProfileStore,
        tenants: list[UUID],
        call: Callable[[UUID, Callable[[BatchProgress], None], int | None], Awaitable[int]],
    ) -> None:
        with Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            TextColumn("{task.completed:,.0f} rows"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[eta]}"),
            TimeElapsedColumn(),
            console=_err_console(),
            transient=False,
        ) as progress:
            for tenant_id in tenants:
                # an upper bound of the job's size, at a bounded cost: the ETA is one too
                counted = await store.estimate_items_by_status(tenant_id)
                estimate = counted["fields"]["active"]
                if self.job == "mark_orphans":
                    estimate += counted["assets"]["active"]
                task = progress.add_task(f"{self.title} {tenant_id}", total=None, rate="", eta="")

                def on_batch(report: BatchProgress, task: Any = task) -> None:
                    eta = report.eta_seconds
                    progress.update(
                        task,
                        completed=report.done,
                        rate=f"{report.rate:,.0f} rows/s",
                        eta="" if eta is None else f"ETA <= {eta:,.0f}s",
                    )
                    self.tenants[report.tenant_id] = {
                        "rows": report.done,
                        "batches": report.batch,
                        "seconds": round(report.elapsed_seconds, 3),
                        "rows_per_second": round(report.rate, 1),
                    }

                await call(tenant_id, on_batch, estimate)
                progress.update(task, eta="done")

    def document(self, total_key: str) -> dict[str, Any]:
        return {
            "tenants": {str(tenant_id): entry for tenant_id, entry in self.tenants.items()},
            total_key: sum(entry["rows"] for entry in self.tenants.values()),
            "batches": sum(entry["batches"] for entry in self.tenants.values()),
            "batch_size": self.batch_size,
        }

    def echo(self, what: str) -> None:
        for tenant_id, entry in self.tenants.items():
            click.echo(
                f"tenant {tenant_id}: {entry['rows']} {what} in {entry['batches']} batch(es), "
                f"{entry['rows_per_second']:,.0f} rows/s"
            )
        total = sum(entry["rows"] for entry in self.tenants.values())
        click.echo(f"total: {total} {what} in {len(self.tenants)} tenant(s)")


def _run_bulk_job(
    ctx: click.Context,
    tenant: tuple[UUID, ...],
    batch_size: int | None,
    job: Literal["expire", "mark_orphans"],
    title: str,
    json_key: str,
    done: str,
) -> None:
    """Run one batched bulk job (``expire`` or ``mark_orphans``) over every tenant or
    ``--tenant``, with per-tenant progress; print the summary (or ``--json``)."""
    settings = _settings(ctx)
    bulk = _BulkRun(job, title, batch_size or settings.worker.batch_size)

    async def work(store: ProfileStore) -> None:
        method = store.expire_stale_fields if job == "expire" else store.mark_orphans

        async def call(
            tenant_id: UUID, on_batch: Callable[[BatchProgress], None], estimate: int | None
        ) -> int:
            return await method(
                tenant_id,
                batch_size=bulk.batch_size,
                progress=on_batch,
                estimated_total=estimate,
            )

        await bulk.run(store, await _tenants(store, tenant), call)

    _run(_with_store(settings, work))
    if _wants_json(ctx):
        _echo_json(bulk.document(json_key))
        return
    bulk.echo(done)


@cli.command()
@click.option("--tenant", "-t", type=UUID_TYPE, multiple=True, help="Only this tenant (repeat).")
@_batch_size_option
@click.pass_context
def expire(ctx: click.Context, tenant: tuple[UUID, ...], batch_size: int | None) -> None:
    """Mark every ACTIVE field past expires_at EXPIRED, for every tenant or --tenant.

    Works in batches (each its own transaction, so a large tenant finishes under any
    statement_timeout); a run cut short is continued by the next one."""
    _run_bulk_job(
        ctx, tenant, batch_size, "expire", "expiring stale fields of", "expired", "field(s) expired"
    )


@cli.command("mark-orphans")
@click.option("--tenant", "-t", type=UUID_TYPE, multiple=True, help="Only this tenant (repeat).")
@_batch_size_option
@click.pass_context
def mark_orphans(ctx: click.Context, tenant: tuple[UUID, ...], batch_size: int | None) -> None:
    """Mark ORPHANED every item whose source field or asset no longer exists, for every
    tenant or --tenant; in batches, as expire."""
    _run_bulk_job(
        ctx,
        tenant,
        batch_size,
        "mark_orphans",
        "marking orphans of",
        "orphaned",
        "item(s) marked orphaned",
    )


@cli.command()
@click.option("--tenant", "-t", type=UUID_TYPE, multiple=True, help="Only this tenant (repeat).")
@click.option(
    "--exact",
    is_flag=True,
    help="Count every row (slow on a large tenant) instead of the bounded estimate.",
)
@click.pass_context
def status(ctx: click.Context, tenant: tuple[UUID, ...], exact: bool) -> None:
    """Field versions and assets by status, per tenant (every tenant or --tenant).

    By default the bounded-cost estimate the worker's gauge uses (exact on a small table);
    --exact counts every row."""
    settings = _settings(ctx)

    async def work(store: ProfileStore) -> dict[UUID, dict[str, dict[str, int]]]:
        counts: dict[UUID, dict[str, dict[str, int]]] = {}
        for tenant_id in await _tenants(store, tenant):
            if exact:
                counts[tenant_id] = await store.count_items_by_status(tenant_id)
            else:
                counts[tenant_id] = await store.estimate_items_by_status(tenant_id)
        return counts

    counts = _run(_with_store(settings, work))
    if _wants_json(ctx):
        _echo_json(
            {
                "exact": exact,
                "tenants": {str(tenant_id): entry for tenant_id, entry in counts.items()},
            }
        )
        return
    table = Table("tenant", "kind", *(s.value for s in ItemStatus))
    for tenant_id, entry in counts.items():
        for kind, by_status in entry.items():
            table.add_row(str(tenant_id), kind, *(f"{by_status[s.value]:,}" for s in ItemStatus))
    _out_console().print(table)
    if not exact:
        click.echo("(estimates on large tables; --exact counts every row)")


# -----------------------------------------------------------------------------------------
# profile show | export | purge
# -----------------------------------------------------------------------------------------


@cli.group()
def profile() -> None:
    """Show, export (data portability) or purge (right to erasure) one customer profile."""


def _profile_selector(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--tenant", "-t", type=UUID_TYPE, required=True, help="Tenant id.")(func)
    func = click.option("--profile-id", "-p", type=UUID_TYPE, help="Profile id.")(func)
    func = click.option("--customer-id", type=UUID_TYPE, help="Customer id.")(func)
    func = click.option(
        "--channel",
        type=click.Choice([c.value for c in Channel]),
        help="Channel of an identity (with --user).",
    )(func)
    func = click.option("--user", "channel_user_id", help="Channel user id (with --channel).")(func)
    return func


async def _find_profile(
    store: ProfileStore,
    tenant: UUID,
    profile_id: UUID | None,
    customer_id: UUID | None,
    channel: str | None,
    channel_user_id: str | None,
    include_history: bool = False,
) -> CustomerProfile:
    given = [profile_id is not None, customer_id is not None, channel is not None]
    if sum(given) != 1 or (channel is not None) != (channel_user_id is not None):
        raise click.UsageError("give exactly one of --profile-id, --customer-id, --channel+--user")
    found: CustomerProfile | None
    if profile_id is not None:
        found = await store.get_by_id(tenant, profile_id, include_history=include_history)
    elif customer_id is not None:
        found = await store.get_by_customer_id(tenant, customer_id, include_history=include_history)
    else:
        assert channel is not None and channel_user_id is not None
        found = await store.get_by_channel_identity(
            tenant, Channel(channel), channel_user_id, include_history=include_history
        )
    if found is None:
        raise errors.NotFoundError(f"no live profile found in tenant {tenant}")
    return found


@profile.command("show")
@_profile_selector
@click.option("--history", is_flag=True, help="Every version of every field.")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@click.pass_context
def profile_show(
    ctx: click.Context,
    tenant: UUID,
    profile_id: UUID | None,
    customer_id: UUID | None,
    channel: str | None,
    channel_user_id: str | None,
    history: bool,
    as_json: bool,
) -> None:
    """Show one live profile: identities, active fields (or history), assets."""
    settings = _settings(ctx)

    async def work(store: ProfileStore) -> CustomerProfile:
        return await _find_profile(
            store, tenant, profile_id, customer_id, channel, channel_user_id, history
        )

    found = _run(_with_store(settings, work))
    if _wants_json(ctx, as_json):
        click.echo(_safe_json(found.model_dump_json(indent=2)))
        return
    # customer strings are Text (never markup) with control characters escaped
    console = _out_console()
    console.print(Text.assemble(("profile", "bold"), f" {found.id}  customer {found.customer_id}"))
    for identity in found.channel_identities:
        mark = " (primary)" if identity.primary else ""
        console.print(_cell(f"  {identity.channel.value}: {identity.channel_user_id}{mark}"))
    table = Table("field", "value", "status", "source", "verified", "collected_at")
    rows = (
        [v for versions in found.field_history.values() for v in versions]
        if history
        else list(found.fields.values())
    )
    for item in rows:
        table.add_row(
            _cell(item.name),
            _cell(json.dumps(item.value, ensure_ascii=False)),
            _cell(item.status.value),
            _cell(item.source.value),
            _cell("yes" if item.verified else "no"),
            _cell(item.collected_at.isoformat(timespec="seconds")),
        )
    console.print(table)
    for asset in found.assets:
        console.print(_cell(f"  asset {asset.name} ({asset.asset_type}) {asset.storage_path}"))


@profile.command("explain")
@click.option("--tenant", "-t", type=UUID_TYPE, required=True, help="Tenant id.")
@click.option("--profile-id", "-p", type=UUID_TYPE, required=True, help="Profile id.")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
@click.pass_context
def profile_explain(
    ctx: click.Context, tenant: UUID, profile_id: UUID, name: str, as_json: bool
) -> None:
    """Why the vault serves field NAME: source, history, lineage, dependents."""
    from ccvault.provenance import FieldExplanation, explanation_lines

    settings = _settings(ctx)

    async def work(store: ProfileStore) -> FieldExplanation:
        return await store.explain_field(tenant, profile_id, name)

    found = _run(_with_store(settings, work))
    if _wants_json(ctx, as_json):
        click.echo(_safe_json(found.model_dump_json(indent=2)))
        return
    console = _out_console()  # customer strings: plain Text, control characters escaped
    for line in explanation_lines(found):
        console.print(_cell(line))


@profile.command("export")
@_profile_selector
@click.option(
    "--subject",
    is_flag=True,
    help="With --profile-id: export the whole data subject (as --channel/--customer-id do).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON document here (default: stdout).",
)
@click.pass_context
def profile_export(
    ctx: click.Context,
    tenant: UUID,
    profile_id: UUID | None,
    customer_id: UUID | None,
    channel: str | None,
    channel_user_id: str | None,
    subject: bool,
    output: Path | None,
) -> None:
    """Write everything held about the customer, history included, as one JSON document.

    By --channel/--user or --customer-id (or -p with --subject): the data subject, every
    profile the identity or customer id ever belonged to (live, soft-deleted, merged away,
    merge targets), format ``ccvault.subject-export/1``; the same set ``profile purge``
    erases. By --profile-id alone: that one profile, format ``ccvault.export/1``.
    """
    settings = _settings(ctx)
    _check_subject_selector(profile_id, customer_id, channel, channel_user_id)

    async def work(store: ProfileStore) -> dict[str, Any]:
        if profile_id is not None and not subject:
            return await store.export_profile(tenant, profile_id)
        return await store.export_subject(
            tenant,
            channel=None if channel is None else Channel(channel),
            channel_user_id=channel_user_id,
            customer_id=customer_id,
            profile_id=profile_id,
        )

    document = _run(_with_store(settings, work))
    text = _safe_json(json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True))
    if output is None:
        click.echo(text)
    else:
        _write_private(output, text + "\n")  # personal data: mode 0600
        if "profile" in document:
            click.echo(f"exported profile {document['profile']['id']} to {output}", err=True)
        else:
            count = len(document["profiles"])
            click.echo(f"exported {count} profile(s) of the subject to {output}", err=True)


def _check_subject_selector(
    profile_id: UUID | None,
    customer_id: UUID | None,
    channel: str | None,
    channel_user_id: str | None,
) -> None:
    given = [profile_id is not None, customer_id is not None, channel is not None]
    if sum(given) != 1 or (channel is not None) != (channel_user_id is not None):
        raise click.UsageError("give exactly one of --profile-id, --customer-id, --channel+--user")


def _erasure_lines(report: ErasureReport) -> list[str]:
    """The report for people: ids and counts only (no personal data)."""
    verb = "would be purged" if report.dry_run else "purged"
    lines = [
        f"profile {p.profile_id} {verb} ({p.kind.value}: {p.field_versions} field "
        f"version(s), {p.assets} asset(s), {p.identities} identity(ies), "
        f"{p.consents} consent(s))"
        for p in report.profiles
    ]
    totals = report.totals()
    lines.append(
        f"{totals['profiles']} profile(s), {totals['field_versions']} field version(s), "
        f"{totals['assets']} asset(s), {totals['identities']} identity(ies), "
        f"{totals['consents']} consent(s), {totals['merge_log_entries']} merge log "
        f"entry(ies) {verb}"
    )
    if report.dry_run:
        lines.append("dry run: nothing was erased")
    return lines


@profile.command("purge")
@_profile_selector
@click.option("--dry-run", is_flag=True, help="Print what would be erased; erase nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def profile_purge(
    ctx: click.Context,
    tenant: UUID,
    profile_id: UUID | None,
    customer_id: UUID | None,
    channel: str | None,
    channel_user_id: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Erase a data subject: every profile the identity, customer id or profile ever
    belonged to (live, soft-deleted, merged away, and merge targets, whole), with all they
    hold, from the database and the cache (rule: ccvault.rules.erasure). --dry-run prints
    the same report and erases nothing. Nobody found: the not-found exit code.
    """
    settings = _settings(ctx)
    _check_subject_selector(profile_id, customer_id, channel, channel_user_id)
    if not yes and not dry_run:
        click.confirm(
            "Erase every profile of this data subject and all its data irreversibly?",
            abort=True,
            err=True,
        )

    async def work(store: ProfileStore) -> ErasureReport:
        return await store.erase_subject(
            tenant,
            channel=None if channel is None else Channel(channel),
            channel_user_id=channel_user_id,
            customer_id=customer_id,
            profile_id=profile_id,
            dry_run=dry_run,
        )

    report = _run(_with_store(settings, work))
    if _wants_json(ctx, as_json):
        document = report.model_dump(mode="json")
        document["totals"] = report.totals()
        _echo_json(document)
        return
    for line in _erasure_lines(report):
        click.echo(line)


# -----------------------------------------------------------------------------------------
# worker, metrics, rotate-keys
# -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _on_stop_signals(stop: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _serve_metrics(settings: VaultSettings) -> Any:
    from ccvault import metrics

    try:
        server, _ = metrics.serve(settings.metrics.host, settings.metrics.port)
    except OSError as exc:
        raise errors.ConfigurationError(
            f"metrics: cannot listen on {settings.metrics.host}:{settings.metrics.port} "
            f"({exc.strerror or exc}); change [metrics] port"
        ) from None
    logging.getLogger("ccvault.metrics").warning(
        "serving Prometheus metrics on http://%s:%d/metrics",
        settings.metrics.host,
        server.server_port,
    )
    return server


def _sweep_json(result: Any) -> dict[str, Any]:
    """One tenant's sweep report as JSON (ids as text)."""
    import dataclasses

    report: dict[str, Any] = dataclasses.asdict(result)
    return report


@cli.command()
@click.option("--once", is_flag=True, help="One sweep over every tenant, then exit.")
@click.option("--tenant", "-t", type=UUID_TYPE, multiple=True, help="Only this tenant (repeat).")
@click.option(
    "--metrics/--no-metrics",
    "serve_metrics",
    default=True,
    help="Serve Prometheus metrics on [metrics] host:port (default: on).",
)
@click.pass_context
def worker(ctx: click.Context, once: bool, tenant: tuple[UUID, ...], serve_metrics: bool) -> None:
    """Expire stale fields, mark orphans and refresh the status gauge, for every tenant,
    every expire_check_interval_seconds. Stops cleanly on SIGTERM/SIGINT, after the batch
    in progress (each batch is committed; the next sweep continues). Several workers may
    run at once: a tenant claim ([worker] lease: in Redis, claim rows in PostgreSQL, or
    files on one host) keeps them apart, so a tenant is swept once per interval. Expiry and
    orphan marking run in batches of [worker] batch_size."""
    from ccvault.worker import Worker, lease_from_settings

    settings = _settings(ctx)
    logging.getLogger("ccvault").setLevel(logging.INFO)

    async def work(store: ProfileStore) -> None:
        lease = lease_from_settings(settings)
        job = Worker(store, settings, lease, tenant_ids=tenant or None)
        # signal handlers first: from the moment metrics answer, SIGTERM is a clean stop
        with _on_stop_signals(job.request_stop):
            server = _serve_metrics(settings) if serve_metrics else None
            try:
                if once:
                    results = await job.run_once()
                    if _wants_json(ctx):
                        _echo_json([_sweep_json(r) for r in results])
                    failed = [r for r in results if r.error is not None]
                    if failed:
                        raise errors.VaultError(
                            f"{len(failed)} tenant(s) failed, first: tenant {failed[0].tenant_id}: "
                            f"{failed[0].error}"
                        )
                else:
                    await job.run()
            finally:
                if server is not None:
                    server.shutdown()
                await lease.aclose()

    _run(_with_store(settings, work))


@cli.command("metrics")
@click.option(
    "--refresh-seconds",
    type=click.FloatRange(min=0.1),
    default=None,
    help="How often to refresh the store-derived gauge (default: [metrics] "
    "refresh_interval_seconds).",
)
@click.pass_context
def metrics_command(ctx: click.Context, refresh_seconds: float | None) -> None:
    """Serve the vault's Prometheus metrics on [metrics] host:port until SIGTERM.

    This process refreshes profile_fields_by_status for every tenant from the store; the
    event counters (cache, validation, gap fill...) are per process: an application exposes
    them with ccvault.metrics.serve() or its own exporter of ccvault.metrics.REGISTRY.
    """
    from ccvault import metrics

    settings = _settings(ctx)
    interval = refresh_seconds or settings.metrics.refresh_interval_seconds
    logging.getLogger("ccvault").setLevel(logging.INFO)

    async def work(store: ProfileStore) -> None:
        stop = asyncio.Event()
        with _on_stop_signals(stop.set):
            server = _serve_metrics(settings)
            try:
                while not stop.is_set():
                    tenants = await store.list_tenant_ids()
                    for tenant_id in tenants:
                        await metrics.refresh_status_gauge(store, tenant_id)
                    metrics.forget_tenants(tenants)  # a tenant gone is no longer reported
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=interval)
            finally:
                server.shutdown()

    _run(_with_store(settings, work))


@cli.command("rotate-keys")
@click.option("--tenant", "-t", type=UUID_TYPE, multiple=True, help="Only this tenant (repeat).")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Profiles per step (progress is reported after each).",
)
@click.pass_context
def rotate_keys(ctx: click.Context, tenant: tuple[UUID, ...], batch_size: int) -> None:
    """Re-encrypt every PII value (every version of every profile) under the current key,
    the last entry of the keyring; also seals PII values still stored in plaintext.

    Shows profiles done, rate and ETA on stderr. A field version that cannot be decrypted
    is named (tenant, profile, item, key id; never a value) and skipped, the run goes on,
    and the command exits 1 "completed with errors" after printing its report."""
    from ccvault.crypto import EncryptedProfileStore, RotationProgress, RotationReport

    settings = _settings(ctx)
    if not settings.profile.auto_encrypt_pii:
        raise errors.ConfigurationError(
            "rotate-keys needs profile.auto_encrypt_pii = true and the keyring in "
            "profile.pii_encryption_key_id"
        )

    async def work(store: ProfileStore) -> tuple[str, list[RotationReport]]:
        assert isinstance(store, EncryptedProfileStore)
        tenants = await _tenants(store, tenant)
        with _progress(_err_console()) as progress:
            task = progress.add_task(
                f"re-encrypting under key {store.keyring.current!r}", total=None
            )

            def report_progress(state: RotationProgress) -> None:
                eta = "?" if state.eta_seconds is None else f"{state.eta_seconds:.0f}s"
                progress.update(
                    task,
                    completed=state.profiles_done,
                    total=state.profiles_total,
                    description=(
                        f"re-encrypting under key {store.keyring.current!r}: "
                        f"{state.rewritten} rewritten, {state.failed} failed, "
                        f"{state.rate:.0f} profiles/s, ETA {eta}"
                    ),
                )

            reports = await store.rotate_keys(
                tenants, progress=report_progress, batch_size=batch_size
            )
        return store.keyring.current, reports

    current, reports = _run(_with_store(settings, work))
    profiles = sum(report.profiles for report in reports)
    rewritten = sum(report.rewritten for report in reports)
    identities = sum(report.identities for report in reports)
    failures = [failure for report in reports for failure in report.failures]
    if _wants_json(ctx):
        _echo_json(
            {
                "key_id": current,
                "profiles": profiles,
                "rewritten": rewritten,
                "identities": identities,
                "failed": [
                    {
                        "tenant_id": str(failure.tenant_id),
                        "profile_id": str(failure.profile_id),
                        "item_id": str(failure.item_id),
                        "key_id": failure.key_id,
                        "reason": failure.reason,
                    }
                    for failure in failures
                ],
            }
        )
    else:
        click.echo(
            f"re-encrypted {rewritten} field version(s) in {profiles} profile(s) under key "
            f"{current!r}"
            + (f"; {identities} channel identit(y/ies) re-sealed" if identities else "")
        )
        for failure in failures:
            click.echo(
                _safe(
                    f"not decrypted, left as it is: tenant {failure.tenant_id} profile "
                    f"{failure.profile_id} field version {failure.item_id} key id "
                    f"{failure.key_id!r}: {failure.reason}"
                )
            )
    if failures:
        raise errors.VaultError(
            f"rotate-keys completed with errors: {len(failures)} field version(s) could not "
            "be decrypted and were left as they are (listed in the report and the log); "
            "every other version was re-encrypted"
        )


# -----------------------------------------------------------------------------------------
# config show | check
# -----------------------------------------------------------------------------------------


@cli.group("config")
def config_group() -> None:
    """Show the effective settings (secrets masked) or check that they work."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    if isinstance(node, dict) and node:
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
    else:
        flat[prefix.rstrip(".")] = node
    return flat


@config_group.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the effective settings and where they came from; every secret is masked."""
    settings = _settings(ctx)
    # JSON mode masks every secret (SecretStr, SecretUrl, the providers' DSNs and URIs)
    document = settings.model_dump(mode="json")
    if _wants_json(ctx):
        _echo_json({"sources": settings.sources(), "settings": document})
        return
    for source in settings.sources():
        click.echo(_safe(f"# source: {source}"))
    for key, value in _flatten(document).items():
        click.echo(_safe(f"{key} = {json.dumps(value, ensure_ascii=False)}"))


async def _check_store(settings: VaultSettings) -> str:
    async def work(store: ProfileStore) -> str:
        await store.list_tenant_ids()
        return f"{settings.profile.store_provider} store answers"

    from ccvault.registry import open_store

    async with open_store(settings) as store:
        return await work(store)


def _record_push_check(settings: VaultSettings, record: Callable[..., None]) -> None:
    """config check's ``redis push`` line (push mode only)."""
    if settings.redis.near_cache_size <= 0:
        record("redis push", True, "near_cache_size = 0: no near tier, nothing pushed")
        return
    refused = _run(push_tracking_problem(settings))
    if refused is None:
        record("redis push", True, "a tracking session opens (CLIENT TRACKING)")
    else:
        code = EXIT_CONFIGURATION if refused[0] == "refused" else EXIT_UNAVAILABLE
        record("redis push", False, refused[1], code)


@config_group.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Load the settings and try them: the provider and its store, the PII keyring, Redis
    when the cache is on (a wrong password fails here), the extractor's settings. Exits
    with the code of the first failure (6 configuration, 7 unavailable...)."""
    env = _env(ctx)
    checks: list[dict[str, Any]] = []
    first_failure: int | None = None

    def record(name: str, ok: bool, detail: str, code: int = EXIT_OK) -> None:
        nonlocal first_failure
        checks.append({"check": name, "ok": ok, "detail": detail})
        if not ok and first_failure is None:
            first_failure = code

    try:
        settings = env.settings()
    except errors.VaultError as exc:
        settings = None
        record("settings", False, _one_line(exc), error_kind(exc)[0])
    if settings is not None:
        record("settings", True, "; ".join(settings.sources()))
        if settings.profile.auto_encrypt_pii:
            from ccvault.crypto import Keyring

            try:
                ring = Keyring.parse(settings.profile.pii_encryption_key_id.get_secret_value())
                record("pii keyring", True, f"{len(ring.keys)} key(s), current {ring.current!r}")
            except errors.VaultError as exc:
                record("pii keyring", False, _one_line(exc), error_kind(exc)[0])
        else:
            record("pii keyring", True, "auto_encrypt_pii is off: no encryption at rest")
        if settings.profile.cache_enabled:
            problem = _run(redis_problem(settings))
            if problem is None:
                record("redis", True, f"{settings.redis.url.masked()} answers PING")
                if settings.redis.near_cache_invalidation == "push":
                    _record_push_check(settings, record)
            else:
                code = EXIT_CONFIGURATION if problem[0] == "auth" else EXIT_UNAVAILABLE
                record("redis", False, problem[1], code)
        else:
            record("redis", True, "cache_enabled is off: Redis not used")
        extraction = settings.extraction
        if extraction.extractor == "openai" and not (
            extraction.openai.base_url and extraction.openai.model
        ):
            record(
                "extraction",
                False,
                "extractor is openai but [extraction.openai] base_url or model is empty",
                EXIT_CONFIGURATION,
            )
        else:
            record("extraction", True, f"extractor {extraction.extractor}")
        no_crypto = settings.model_copy(deep=True)
        no_crypto.profile.auto_encrypt_pii = False
        no_crypto.profile.cache_enabled = False
        # the schema first, read only: config check never changes it (nor creates a file)
        try:
            status = _run(_schema_call(no_crypto, lambda store: store.schema_status()))
        except errors.VaultError as exc:
            status = None
            record("schema", False, _one_line(exc), error_kind(exc)[0])
        if status is not None:
            where = f"{status.location}: " if status.location else ""
            # the provider applies pending migrations itself when opened (the embedded file)
            on_start = bool(
                no_crypto.provider_options(no_crypto.profile.store_provider).get("migrate_on_start")
            )
            if status.up_to_date:
                record("schema", True, f"{where}version {status.current}, up to date")
            elif on_start and not status.newer:
                record(
                    "schema",
                    True,
                    f"{where}version {status.current} of {status.latest}: "
                    f"{len(status.pending)} migration(s) applied when the store opens "
                    "(migrate_on_start)",
                )
            elif status.newer:
                record(
                    "schema",
                    False,
                    f"{where}version {status.current} is newer than this ccvault knows "
                    f"({status.latest}): upgrade ccvault",
                    EXIT_CONFIGURATION,
                )
            else:
                record(
                    "schema",
                    False,
                    f"{where}version {status.current} of {status.latest}, "
                    f"{len(status.pending)} migration(s) pending: run `ccvault migrate`",
                    EXIT_CONFIGURATION,
                )
            if status.up_to_date:  # else opening would refuse (or, embedded, migrate)
                try:
                    record("store", True, _run(_check_store(no_crypto)))
                except errors.VaultError as exc:
                    record("store", False, _one_line(exc), error_kind(exc)[0])
    if _wants_json(ctx):
        _echo_json({"ok": first_failure is None, "checks": checks})
    else:
        for check in checks:
            mark = "ok  " if check["ok"] else "FAIL"
            click.echo(_safe(f"{mark} {check['check']}: {check['detail']}"))
    if first_failure is not None:
        ctx.exit(first_failure)


def _register_server_commands() -> None:
    # serve, apikey, mcp: bodies in ccvault.server.commands (the web stack loads on use)
    from ccvault.server.commands import register

    register(cli)


_register_server_commands()


def _register_eval_commands() -> None:
    # eval sgd: body in ccvault.evaluation.command
    from ccvault.evaluation.command import eval_group

    cli.add_command(eval_group)


_register_eval_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="ccvault")
