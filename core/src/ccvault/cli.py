"""The ``ccvault`` operator command line (``python -m ccvault`` does the same).

Every command reads the same settings: ``--config FILE`` (or ``$CCVAULT_CONFIG``), by default
``config/default.toml`` when it exists in the working directory, else the built-in defaults;
then the environment (``CCVAULT_PROFILE__...``, ``${VAR}`` references). On failure a command
prints one line, ``ccvault: error: REASON``, on stderr and exits non-zero: 2 for a
configuration problem (bad settings, missing key, unknown provider) or bad usage, 1 otherwise.
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
from typing import Any, NoReturn, TypeVar
from uuid import UUID

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

from ccvault import errors
from ccvault.models import Channel, CustomerProfile
from ccvault.settings import VaultSettings, load_settings
from ccvault.store import ProfileStore

__all__ = ["cli", "main"]

DEFAULT_CONFIG = Path("config/default.toml")
EMBEDDED_CONFIG = Path("config/embedded.toml")

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


class _VaultGroup(click.Group):
    """Turns every :class:`~ccvault.errors.VaultError` into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.VaultError as exc:
            click.echo(f"ccvault: error: {_one_line(exc)}", err=True)
            ctx.exit(2 if isinstance(exc, errors.ConfigurationError) else 1)


class _Env:
    """What the group passes to its commands: how to get the settings."""

    def __init__(self, config: Path | None) -> None:
        self.config = config

    def settings(self, fallback: Path | None = None, **defaults: Any) -> VaultSettings:
        if self.config is not None:
            return load_settings(self.config)
        if fallback is not None and fallback.exists():
            return load_settings(fallback)
        if DEFAULT_CONFIG.exists() and fallback is None:
            return load_settings(DEFAULT_CONFIG)
        return load_settings(None, **defaults)


def _settings(ctx: click.Context) -> VaultSettings:
    env = ctx.find_object(_Env)
    assert env is not None
    return env.settings()


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


def _fail(message: str, code: int = 1) -> NoReturn:
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


@click.group(cls=_VaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CCVAULT_CONFIG",
    default=None,
    help="TOML settings file (default: config/default.toml if present, else built-in "
    "defaults; env CCVAULT_CONFIG).",
)
@click.option("--verbose", "-v", is_flag=True, help="Log at INFO level on stderr.")
@click.version_option(package_name="ccvault", prog_name="ccvault")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, verbose: bool) -> None:
    """ccvault: the Customer Context Vault operator tool."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = _Env(config)


# -----------------------------------------------------------------------------------------
# providers, demo, keygen
# -----------------------------------------------------------------------------------------


@cli.command()
def providers() -> None:
    """List the installed storage providers with their distribution and version."""
    from ccvault.registry import installed_providers

    found = installed_providers()
    if not found:
        _fail("no storage provider is installed; pip install ccvault-sqlite (for example)")
    table = Table("provider", "distribution", "version", title="Installed storage providers")
    for item in found.values():
        table.add_row(item.name, item.distribution, item.version)
    _out_console().print(table)


@cli.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run a short end-to-end story on the embedded store and print it.

    Settings: --config if given, else config/embedded.toml if present, else the in-memory
    provider without cache or encryption.
    """
    from ccvault.demo import run_demo

    env = ctx.find_object(_Env)
    assert env is not None
    settings = env.settings(
        fallback=EMBEDDED_CONFIG,
        store_provider="inmemory",
        cache_enabled=False,
        auto_encrypt_pii=False,
    )
    _run(run_demo(settings, Console()))


@cli.command()
@click.argument("kid")
def keygen(kid: str) -> None:
    """Print a fresh PII keyring entry KID:BASE64 (append it to PROFILE_PII_ENCRYPTION_KEY
    with a comma, then run rotate-keys)."""
    from ccvault.crypto import generate_key_entry

    click.echo(generate_key_entry(kid))


# -----------------------------------------------------------------------------------------
# store operations
# -----------------------------------------------------------------------------------------


async def _with_store(settings: VaultSettings, work: Callable[[ProfileStore], Awaitable[_T]]) -> _T:
    from ccvault.registry import open_store

    async with open_store(settings) as store:
        return await work(store)


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or migrate the storage schema (idempotent; safe with concurrent starters)."""
    settings = _settings(ctx)

    async def work(store: ProfileStore) -> None:
        return None  # open_store runs setup(), which is the migration

    with _err_console().status(f"migrating the {settings.profile.store_provider} store"):
        _run(_with_store(settings, work))
    click.echo(f"schema of the {settings.profile.store_provider} store is up to date")


async def _tenants(store: ProfileStore, tenant: tuple[UUID, ...]) -> list[UUID]:
    return list(tenant) if tenant else await store.list_tenant_ids()


@cli.command()
@click.option("--tenant", "-t", type=UUID_TYPE, multiple=True, help="Only this tenant (repeat).")
@click.pass_context
def expire(ctx: click.Context, tenant: tuple[UUID, ...]) -> None:
    """Mark every ACTIVE field past expires_at EXPIRED, for every tenant or --tenant."""
    settings = _settings(ctx)

    async def work(store: ProfileStore) -> dict[UUID, int]:
        tenants = await _tenants(store, tenant)
        done: dict[UUID, int] = {}
        with _progress(_err_console()) as progress:
            task = progress.add_task("expiring stale fields", total=len(tenants))
            for tenant_id in tenants:
                done[tenant_id] = await store.expire_stale_fields(tenant_id)
                progress.advance(task)
        return done

    done = _run(_with_store(settings, work))
    for tenant_id, count in done.items():
        click.echo(f"tenant {tenant_id}: {count} field(s) expired")
    click.echo(f"total: {sum(done.values())} field(s) expired in {len(done)} tenant(s)")


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
    if as_json:
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


@profile.command("export")
@_profile_selector
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
    output: Path | None,
) -> None:
    """Write everything held about the customer, history included, as one JSON document."""
    settings = _settings(ctx)

    async def work(store: ProfileStore) -> dict[str, Any]:
        target = profile_id
        if target is None:
            target = (
                await _find_profile(store, tenant, None, customer_id, channel, channel_user_id)
            ).id
        return await store.export_profile(tenant, target)

    document = _run(_with_store(settings, work))
    text = _safe_json(json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True))
    if output is None:
        click.echo(text)
    else:
        _write_private(output, text + "\n")  # personal data: mode 0600
        click.echo(f"exported profile {document['profile']['id']} to {output}", err=True)


@profile.command("purge")
@_profile_selector
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def profile_purge(
    ctx: click.Context,
    tenant: UUID,
    profile_id: UUID | None,
    customer_id: UUID | None,
    channel: str | None,
    channel_user_id: str | None,
    yes: bool,
) -> None:
    """Erase the profile and everything it owns, from the database and the cache."""
    settings = _settings(ctx)
    if not yes:
        click.confirm("Erase this profile and all its data irreversibly?", abort=True, err=True)

    async def work(store: ProfileStore) -> tuple[UUID, bool]:
        target = profile_id
        if target is None:
            target = (
                await _find_profile(store, tenant, None, customer_id, channel, channel_user_id)
            ).id
        return target, await store.purge_profile(tenant, target)

    target, purged = _run(_with_store(settings, work))
    if not purged:
        raise errors.NotFoundError(f"profile {target} not found in tenant {tenant}")
    click.echo(f"profile {target} purged")


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
    every expire_check_interval_seconds. Stops cleanly on SIGTERM/SIGINT, after the tenant
    in progress. Several workers may run at once: a tenant claim ([worker] lease: in Redis,
    PostgreSQL advisory locks, or files on one host) keeps them apart."""
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
                    failed = [r for r in await job.run_once() if r.error is not None]
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
                    for tenant_id in await store.list_tenant_ids():
                        await metrics.refresh_status_gauge(store, tenant_id)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=interval)
            finally:
                server.shutdown()

    _run(_with_store(settings, work))


@cli.command("rotate-keys")
@click.option("--tenant", "-t", type=UUID_TYPE, multiple=True, help="Only this tenant (repeat).")
@click.pass_context
def rotate_keys(ctx: click.Context, tenant: tuple[UUID, ...]) -> None:
    """Re-encrypt every PII value (every version of every profile) under the current key,
    the last entry of the keyring; also seals PII values still stored in plaintext."""
    from ccvault.crypto import EncryptedProfileStore

    settings = _settings(ctx)
    if not settings.profile.auto_encrypt_pii:
        raise errors.ConfigurationError(
            "rotate-keys needs profile.auto_encrypt_pii = true and the keyring in "
            "profile.pii_encryption_key_id"
        )

    async def work(store: ProfileStore) -> tuple[str, int, int]:
        assert isinstance(store, EncryptedProfileStore)
        tenants = await _tenants(store, tenant)
        profiles = 0
        rewritten = 0
        with _progress(_err_console()) as progress:
            task = progress.add_task(
                f"re-encrypting under key {store.keyring.current!r}", total=len(tenants)
            )
            for tenant_id in tenants:
                for report in await store.rotate_keys([tenant_id]):
                    profiles += report.profiles
                    rewritten += report.rewritten
                progress.advance(task)
        return store.keyring.current, profiles, rewritten

    current, profiles, rewritten = _run(_with_store(settings, work))
    click.echo(
        f"re-encrypted {rewritten} field version(s) in {profiles} profile(s) under key {current!r}"
    )


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
