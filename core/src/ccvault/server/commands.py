"""The CLI commands of the server: ``serve``, ``apikey create|list|revoke``, ``mcp``.

``ccvault.cli`` only registers them (:func:`register`); the web stack is imported when a
command runs, so the rest of the CLI starts without it.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from uuid import UUID

import click

from ccvault import errors

__all__ = ["register"]

_API_KEYS_OPTION = click.option(
    "--api-keys",
    "api_keys",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The hashed API key file (default: $CCVAULT_API_KEYS_PATH, else api-keys.db in "
    "$CCVAULT_DATA_DIR, default ~/.local/share/ccvault).",
)


def _settings(ctx: click.Context) -> object:
    """The settings of the ``ccvault`` group (``--config``, ``$CCVAULT_CONFIG`` or the
    system file, anywhere on the command line); with no config file, the embedded defaults
    (SQLite in the data directory, a generated local PII key), so ``ccvault serve`` alone
    starts a working vault."""
    from ccvault.settings import embedded_settings

    env = ctx.find_root().obj
    if env is None or not hasattr(env, "settings"):
        return embedded_settings()
    return env.settings(embedded=getattr(env, "config", None) is None)


def _key_store(api_keys: Path | None) -> object:
    from ccvault.server.auth import ApiKeyStore
    from ccvault.server.options import ServerOptions

    return ApiKeyStore(api_keys if api_keys is not None else ServerOptions().api_keys_path)


def _configure_logging() -> None:
    # one JSON access line per request on stderr; uvicorn's own access log (which prints
    # raw paths and query strings) stays off
    access = logging.getLogger("ccvault.server.access")
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="TCP port."
)
@_API_KEYS_OPTION
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1024),
    default=None,
    help="Larger request bodies are refused with 413 (default 1 MiB, $CCVAULT_MAX_BODY_BYTES).",
)
@click.option(
    "--graceful-shutdown-seconds",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="On SIGTERM, how long to wait for in-flight requests.",
)
@click.option("--no-mcp", is_flag=True, help="Do not mount the MCP server at /mcp.")
@click.option(
    "--trust-client-clock",
    is_flag=True,
    hidden=True,
    help="TESTING ONLY: let requests set the store's clock (X-Ccvault-Clock).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    api_keys: Path | None,
    max_body_bytes: int | None,
    graceful_shutdown_seconds: float,
    no_mcp: bool,
    trust_client_clock: bool,
) -> None:
    """Serve the vault over HTTP (/v1, /healthz, /readyz, /metrics, /openapi.json) and MCP
    (/mcp/, streamable HTTP), behind API keys (ccvault apikey create). Settings: --config
    (or $CCVAULT_CONFIG, or the system file), else the embedded defaults. SIGTERM finishes
    the requests in flight, then exits."""
    from ccvault.extras import requires_extra
    from ccvault.server.options import ServerOptions
    from ccvault.settings import VaultSettings

    with requires_extra("server", "ccvault serve"):
        import uvicorn

        from ccvault.server.app import create_app

    settings = _settings(ctx)
    assert isinstance(settings, VaultSettings)
    base = ServerOptions()
    options = ServerOptions(
        host=host,
        port=port,
        api_keys_path=str(api_keys) if api_keys is not None else base.api_keys_path,
        max_body_bytes=max_body_bytes if max_body_bytes is not None else base.max_body_bytes,
        graceful_shutdown_seconds=graceful_shutdown_seconds,
        trust_client_clock=trust_client_clock,
    )
    _configure_logging()
    app = create_app(settings, options=options, mcp=not no_mcp)
    config_ = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=int(graceful_shutdown_seconds) or 1,
        # longer than clients and proxies keep idle connections, so the server is not the
        # side that closes one while a request is on its way (a client sees that as a
        # protocol error); uvicorn's default is 5 s
        timeout_keep_alive=75,
        lifespan="on",
    )
    server = uvicorn.Server(config_)
    # uvicorn finishes the requests in flight on SIGTERM/SIGINT, then re-raises the signal;
    # that re-raise lands here and ends the process with status 0: a clean stop
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, _exit_cleanly)
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise errors.ConfigurationError(f"could not start the server on {host}:{port}")


@click.group("apikey")
def apikey() -> None:
    """Create, list and revoke API keys (each bound to one tenant and a set of scopes)."""


@apikey.command("create")
@click.option("--tenant", "-t", required=True, help="The tenant (UUID) the key is bound to.")
@click.option(
    "--scopes",
    "-s",
    default="read",
    show_default=True,
    help="Comma-separated: read, write, pii:read, admin.",
)
@click.option("--name", "-n", default="", help="A label for operators.")
@_API_KEYS_OPTION
def apikey_create(tenant: str, scopes: str, name: str, api_keys: Path | None) -> None:
    """Create a key and print its token ONCE (only a hash is stored)."""
    from ccvault.server.auth import ApiKeyStore

    try:
        tenant_id = UUID(tenant)
    except ValueError:
        raise errors.ValidationError("--tenant must be a UUID") from None
    store = _key_store(api_keys)
    assert isinstance(store, ApiKeyStore)
    try:
        key, token = store.create(tenant_id, scopes, name=name)
    finally:
        store.close()
    click.echo(token)
    click.echo(
        f"key {key.key_id} for tenant {key.tenant_id}, scopes {','.join(sorted(key.scopes))}; "
        "the token above is shown only once",
        err=True,
    )


@apikey.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key.")
@_API_KEYS_OPTION
def apikey_list(as_json: bool, api_keys: Path | None) -> None:
    """List keys (ids, tenants, scopes, state; never the tokens)."""
    from ccvault.server.auth import ApiKeyStore

    store = _key_store(api_keys)
    assert isinstance(store, ApiKeyStore)
    try:
        keys = store.list()
    finally:
        store.close()
    for key in keys:
        scopes = sorted(key.scopes)
        row = {
            "key_id": key.key_id,
            "tenant_id": str(key.tenant_id),
            "scopes": scopes,
            "name": key.name,
            "created_at": key.created_at.isoformat(),
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        }
        if as_json:
            click.echo(json.dumps(row))
        else:
            state = "revoked" if key.revoked else "active"
            click.echo(f"{key.key_id}  {key.tenant_id}  {','.join(scopes)}  {state}  {key.name}")


@apikey.command("revoke")
@click.argument("key_id")
@_API_KEYS_OPTION
def apikey_revoke(key_id: str, api_keys: Path | None) -> None:
    """Revoke a key at once (running servers refuse it from the next request)."""
    from ccvault.server.auth import ApiKeyStore

    store = _key_store(api_keys)
    assert isinstance(store, ApiKeyStore)
    try:
        revoked = store.revoke(key_id)
    finally:
        store.close()
    if not revoked:
        raise errors.NotFoundError(f"no active key with id {key_id}")
    click.echo(f"revoked {key_id}")


@click.command("mcp")
@click.option(
    "--api-key",
    "api_key",
    envvar="CCVAULT_API_KEY",
    required=True,
    help="The key the tools act with (its tenant and scopes; env CCVAULT_API_KEY).",
)
@_API_KEYS_OPTION
@click.pass_context
def mcp_command(ctx: click.Context, api_key: str, api_keys: Path | None) -> None:
    """Serve the vault's MCP tools over stdio (for an agent that starts it as a subprocess).
    Over HTTP the same tools are at /mcp/ of `ccvault serve`."""
    import asyncio

    from ccvault.extras import requires_extra
    from ccvault.server.auth import ApiKeyStore

    with requires_extra("server", "ccvault mcp"):
        from ccvault.server.mcp import run_stdio

    settings = _settings(ctx)
    keys = _key_store(api_keys)
    assert isinstance(keys, ApiKeyStore)
    # stdout is the protocol channel: every log line goes to stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True)
    try:
        asyncio.run(run_stdio(settings, keys, api_key.strip()))
    finally:
        keys.close()


def register(cli: click.Group) -> None:
    """Add the server's commands to the ``ccvault`` group."""
    cli.add_command(serve)
    cli.add_command(apikey)
    cli.add_command(mcp_command)
