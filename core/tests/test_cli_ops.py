"""The CLI as an operator scripts it (issue 17): where settings come from, global options in
any position, ``config show|check``, ``--json``, exit codes, one-line errors, ``demo``'s guard.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
from click.testing import CliRunner
from pydantic import BaseModel

from ccvault import errors, registry
from ccvault.cli import EXIT_CODES, _hoist_global_options, cli, error_kind
from ccvault.crypto import EncryptedProfileStore, Keyring, generate_key_entry
from ccvault.hookspecs import ProviderSpec
from ccvault.models import Channel, ProfileField, ProfileFieldDefinition
from ccvault.store import ForwardingProfileStore, ProfileStore, StoreRules
from ccvault_inmemory import InMemoryProfileStore


def _redis_servers() -> Any:
    # loaded by path, as test_cache_faults does: core/tests is not a package
    import importlib.util

    name = "ccvault_cache_test_redis_servers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("redis_servers.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


RedisServer = _redis_servers().RedisServer

PASSWORD = "s3cret-pw-for-tests"
TENANT = uuid4()
AGENT = uuid4()


def _invoke(*args: str, **kwargs: Any) -> Any:
    return CliRunner().invoke(cli, list(args), **kwargs)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("CCVAULT_") or name.startswith("PROFILE_PII_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CCVAULT_DATA_DIR", str(tmp_path / "data"))


# ---------------------------------------------------------------------------------------
# a provider that is not embedded ("fakeprod"), sharing one in-memory database
# ---------------------------------------------------------------------------------------


class _Shared(ForwardingProfileStore):
    async def aclose(self) -> None:
        return None

    async def setup(self) -> None:
        return None


class _Options(BaseModel):
    pass


@pytest.fixture
def fakeprod(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryProfileStore]:
    db = InMemoryProfileStore()

    def create(options: BaseModel, rules: StoreRules) -> ProfileStore:
        return _Shared(db)

    spec = ProviderSpec(
        name="fakeprod",
        distribution="ccvault-tests",
        settings_model=_Options,
        create_store=create,
    )
    monkeypatch.setitem(registry._loaded, "fakeprod", spec)
    yield db


def _config(tmp_path: Path, body: str, name: str = "vault.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


PLAIN = '[profile]\nstore_provider = "fakeprod"\ncache_enabled = false\nauto_encrypt_pii = false\n'


# ---------------------------------------------------------------------------------------
# where the settings come from
# ---------------------------------------------------------------------------------------


def test_help_documents_exit_codes_and_the_settings_order() -> None:
    result = _invoke("--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {' '.join(meaning.split())}" in text
    assert "CCVAULT_CONFIG" in text and "/etc/ccvault/ccvault.toml" in text


def test_every_command_logs_its_sources_by_name(
    tmp_path: Path, fakeprod: InMemoryProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, PLAIN)
    monkeypatch.setenv("CCVAULT_PROFILE__VALIDATION_STRICT", "true")
    result = _invoke("migrate", "-v", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert f"config file {config} (from --config)" in result.stderr
    assert "CCVAULT_PROFILE__VALIDATION_STRICT" in result.stderr.partition("environment")[2]
    monkeypatch.setenv("CCVAULT_CONFIG", str(config))
    from_env = _invoke("expire", "-v")
    assert "(from CCVAULT_CONFIG)" in from_env.stderr


def test_a_config_in_the_working_directory_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "default.toml").write_text('[profile]\nstore_provider = "cwd"\n')
    (tmp_path / "ccvault.toml").write_text('[profile]\nstore_provider = "cwd"\n')
    monkeypatch.chdir(tmp_path)
    result = _invoke("config", "show", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["settings"]["profile"]["store_provider"] == "postgres"
    assert document["sources"] == ["built-in defaults", "environment CCVAULT_DATA_DIR"]


def test_config_show_masks_every_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key_entry("k1")
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", key)
    config = _config(
        tmp_path,
        "[providers.postgres]\n"
        f'dsn = "postgresql://app:{PASSWORD}@db.example:5432/vault"\n'
        "[redis]\n"
        f'url = "redis://:{PASSWORD}@cache.example:6379/0"\n',
    )
    for args in (["config", "show"], ["config", "show", "--json"]):
        result = _invoke("-c", str(config), *args)
        assert result.exit_code == 0, result.output
        assert PASSWORD not in result.output and key.split(":")[1] not in result.output
        assert "db.example" in result.output and "cache.example" in result.output
    document = json.loads(_invoke("--json", "-c", str(config), "config", "show").stdout)
    assert any("PROFILE_PII_ENCRYPTION_KEY" in source for source in document["sources"])


# ---------------------------------------------------------------------------------------
# global options in any position
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--config", "C", "--json", "expire"],
        ["expire", "--config", "C", "--json"],
        ["expire", "--json", "-c", "C"],
        ["-v", "expire", "--config=C", "--json"],
    ],
)
def test_global_options_work_before_or_after_the_subcommand(
    args: list[str], tmp_path: Path, fakeprod: InMemoryProfileStore
) -> None:
    config = _config(tmp_path, PLAIN)
    args = [a.replace("C", str(config)) if a in ("C", "--config=C") else a for a in args]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["tenants"], report["expired"], report["batches"]) == ({}, 0, 0)


def test_a_commands_own_option_of_the_same_name_stays_with_it() -> None:
    # eval sgd has its own --config and --json; profile show its own --json
    assert _hoist_global_options(cli, ["eval", "sgd", "--config", "x", "--json"]) == [
        "eval",
        "sgd",
        "--config",
        "x",
        "--json",
    ]
    assert _hoist_global_options(cli, ["profile", "show", "--json", "-c", "x", "-v"]) == [
        "-c",
        "x",
        "-v",
        "profile",
        "show",
        "--json",
    ]
    # a value that looks like a global option is the value of the option before it
    assert _hoist_global_options(cli, ["profile", "show", "--user", "-v"]) == [
        "profile",
        "show",
        "--user",
        "-v",
    ]
    assert _hoist_global_options(cli, ["keygen", "--", "-v"]) == ["keygen", "--", "-v"]


# ---------------------------------------------------------------------------------------
# exit codes, --json, one-line errors
# ---------------------------------------------------------------------------------------


def test_error_kinds_map_to_distinct_exit_codes() -> None:
    cases = {
        errors.NotFoundError("x"): 3,
        errors.IdentityConflictError("x"): 4,
        errors.ActiveFieldConflictError("x"): 4,
        errors.ValidationError("x"): 5,
        errors.SchemaValidationError("f", ["bad"]): 5,
        errors.ConfigurationError("x"): 6,
        errors.ProviderNotFoundError("x"): 6,
        errors.ProviderUnavailableError("x"): 7,
        errors.EncryptionError("x"): 1,
        errors.StorageError("x"): 1,
    }
    for exc, code in cases.items():
        assert error_kind(exc)[0] == code, exc
    assert len({code for code, _ in EXIT_CODES.items()}) == 8


def test_not_found_is_exit_3_and_a_json_object_with_json(
    tmp_path: Path, fakeprod: InMemoryProfileStore
) -> None:
    config = _config(tmp_path, PLAIN)
    args = ["profile", "show", "-t", str(TENANT), "-p", str(uuid4()), "-c", str(config)]
    text = _invoke(*args)
    assert text.exit_code == 3
    assert (
        text.stderr.startswith("ccvault: error: no live profile") and text.stderr.count("\n") == 1
    )
    as_json = _invoke("--json", *args)
    assert as_json.exit_code == 3
    error = json.loads(as_json.stderr)["error"]
    assert error["kind"] == "not_found" and error["exit_code"] == 3


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_database_down_is_exit_7_in_one_line(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        '[profile]\nstore_provider = "postgres"\ncache_enabled = false\n'
        "auto_encrypt_pii = false\n"
        f'[providers.postgres]\ndsn = "postgresql://127.0.0.1:{_closed_port()}/postgres"\n',
    )
    result = _invoke("-c", str(config), "expire")
    assert result.exit_code == 7, result.output
    assert result.stderr.startswith("ccvault: error:") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0?foo=bar", "unknown query parameter 'foo'"),
        ("redis://127.0.0.1:6379/0?socket_timeout=x", "socket_timeout"),
        ("redis://127.0.0.1:6379/zero", "must be a number"),
        ("http://127.0.0.1:6379/0", "redis://"),
        ("redis://127.0.0.1:99999/0", "port"),
    ],
)
def test_an_invalid_redis_url_is_one_line_and_exit_6(
    url: str, expected: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, '[profile]\nstore_provider = "inmemory"\nauto_encrypt_pii = false\n')
    show = ["profile", "show", "-t", str(TENANT), "-p", str(uuid4())]
    result = subprocess.run(
        [sys.executable, "-m", "ccvault", "-c", str(config), *show],
        env={**os.environ, "CCVAULT_REDIS__URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 6, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert expected in result.stderr and "redis.url" in result.stderr


class _PasswordRedis(RedisServer):  # type: ignore[misc,valid-type]
    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=2)


def _serving(server: Any) -> Iterator[Any]:
    """``server`` (a private redis-server) started, and stopped after the test."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[_PasswordRedis]:
    yield from _serving(_PasswordRedis(tmp_path / "redis", None, "--requirepass", PASSWORD))


def test_a_wrong_redis_password_fails_config_check_and_warns_elsewhere(
    tmp_path: Path, fakeprod: InMemoryProfileStore, password_redis: _PasswordRedis
) -> None:
    config = _config(
        tmp_path,
        '[profile]\nstore_provider = "fakeprod"\nauto_encrypt_pii = false\n'
        f'[redis]\nurl = "redis://:wrong-password@127.0.0.1:{password_redis.port}/0"\n',
    )
    check = _invoke("-c", str(config), "config", "check")
    assert check.exit_code == 6, check.output
    assert "FAIL redis" in check.stdout and "refused the credentials" in check.stdout
    assert "wrong-password" not in check.output
    shown = _invoke("-c", str(config), "profile", "show", "-t", str(TENANT), "-p", str(uuid4()))
    assert shown.exit_code == 3
    assert "refused the credentials" in shown.stderr and "cache is bypassed" in shown.stderr
    assert "wrong-password" not in shown.stderr
    right = config.read_text().replace("wrong-password", PASSWORD)
    config.write_text(right)
    ok = _invoke("--json", "-c", str(config), "config", "check")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True and PASSWORD not in ok.output


def test_config_check_reports_a_missing_key_as_configuration(
    tmp_path: Path, fakeprod: InMemoryProfileStore
) -> None:
    config = _config(tmp_path, '[profile]\nstore_provider = "fakeprod"\ncache_enabled = false\n')
    result = _invoke("--json", "config", "check", "-c", str(config))
    assert result.exit_code == 6
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["pii keyring"]["ok"] is False and checks["store"]["ok"] is True


def test_a_wrong_key_under_the_same_key_id_says_so(
    tmp_path: Path, fakeprod: InMemoryProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    right, wrong = generate_key_entry("k1"), generate_key_entry("k1")

    async def seed() -> Any:
        store = EncryptedProfileStore(_Shared(fakeprod), Keyring.parse(right))
        await store.save_field_definition(
            ProfileFieldDefinition(tenant_id=TENANT, agent_id=AGENT, name="email", is_pii=True)
        )
        profile = await store.get_or_create(TENANT, Channel.WHATSAPP, "+31612345678")
        await store.update_field(
            TENANT, profile.id, ProfileField(name="email", value="ana@example.com")
        )
        return profile.id

    pid = asyncio.run(seed())
    monkeypatch.setenv("PROFILE_PII_ENCRYPTION_KEY", wrong)
    config = _config(tmp_path, '[profile]\nstore_provider = "fakeprod"\ncache_enabled = false\n')
    result = _invoke("-c", str(config), "profile", "show", "-t", str(TENANT), "-p", str(pid))
    assert result.exit_code == 1
    assert "the key for key id 'k1' does not decrypt" in result.stderr
    assert "wrong key" in result.stderr and "tampered" in result.stderr
    assert "ana@example.com" not in result.stderr and "+31612345678" not in result.stderr


def test_json_reports(tmp_path: Path, fakeprod: InMemoryProfileStore) -> None:
    config = _config(tmp_path, PLAIN)
    assert json.loads(_invoke("migrate", "--json", "-c", str(config)).stdout)["status"]
    providers = json.loads(_invoke("providers", "--json").stdout)
    assert {"provider", "distribution", "version"} <= set(providers[0])
    assert json.loads(_invoke("keygen", "k9", "--json").stdout)["kid"] == "k9"
    leases = _config(
        tmp_path, PLAIN + f'[worker]\nlease = "file"\nlease_dir = "{tmp_path}"\n', "w.toml"
    )
    worker = _invoke("worker", "--once", "--no-metrics", "--json", "-c", str(leases))
    assert worker.exit_code == 0, worker.output
    assert json.loads(worker.stdout) == []


def test_json_log_format(tmp_path: Path, fakeprod: InMemoryProfileStore) -> None:
    config = _config(tmp_path, PLAIN)
    result = _invoke("expire", "-v", "--log-format", "json", "-c", str(config))
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(line["logger"] == "ccvault.cli" and "sources" in line["message"] for line in lines)
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    from_settings = _config(
        tmp_path, PLAIN + '[logging]\nformat = "json"\nlevel = "INFO"\n', "j.toml"
    )
    again = _invoke("expire", "-c", str(from_settings))
    assert json.loads(again.stderr.splitlines()[0])["level"] == "INFO"


# ---------------------------------------------------------------------------------------
# demo: embedded by default, refuses a non-embedded store
# ---------------------------------------------------------------------------------------


def test_demo_refuses_a_non_embedded_store_unless_allowed(
    tmp_path: Path, fakeprod: InMemoryProfileStore
) -> None:
    config = _config(tmp_path, PLAIN)
    refused = _invoke("demo", "-c", str(config))
    assert refused.exit_code == 6
    assert "--allow-non-embedded" in refused.stderr
    assert asyncio.run(fakeprod.list_tenant_ids()) == []
    allowed = _invoke("demo", "--allow-non-embedded", "-c", str(config))
    assert allowed.exit_code == 0, allowed.output
    assert asyncio.run(fakeprod.list_tenant_ids()) != []


def test_demo_without_config_runs_embedded_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = _invoke("demo")
    assert result.exit_code == 0, result.output
    data = tmp_path / "data"
    assert (data / "vault.db").is_file() and (data / "pii.key").is_file()
    assert "for local use only" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing in the cwd


class _Broken(_Shared):
    async def _list_tenant_ids(self) -> list[Any]:
        raise RuntimeError("ana@example.com broke it")


def test_an_unexpected_error_is_one_line_without_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def create(options: BaseModel, rules: StoreRules) -> ProfileStore:
        return _Broken(InMemoryProfileStore())

    spec = ProviderSpec(
        name="broken", distribution="ccvault-tests", settings_model=_Options, create_store=create
    )
    monkeypatch.setitem(registry._loaded, "broken", spec)
    config = _config(tmp_path, PLAIN.replace("fakeprod", "broken"))
    result = _invoke("expire", "-c", str(config))
    assert result.exit_code == 1
    assert result.stderr.startswith("ccvault: error: unexpected RuntimeError")
    assert result.stderr.count("\n") == 1 and "ana@example.com" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[Any]:
    """A private Redis whose user ``nopush`` may do everything but ``CLIENT TRACKING``, and
    user ``nomark`` everything but ``SET``."""
    acl = ("nopush", "on", f">{PASSWORD}", "~*", "&*", "+@all", "-client|tracking")
    no_set = ("nomark", "on", f">{PASSWORD}", "~*", "&*", "+@all", "-set")
    yield from _serving(RedisServer(tmp_path / "redis", None, "--user", *acl, "--user", *no_set))


# a configuration in push mode, its [redis] table open for a url and more
_PUSH_CONFIG = (
    '[profile]\nstore_provider = "fakeprod"\nauto_encrypt_pii = false\n'
    '[redis]\nnear_cache_invalidation = "push"\n'
)


def test_config_check_tries_push_mode_tracking_session(
    tmp_path: Path, fakeprod: InMemoryProfileStore, acl_redis: Any
) -> None:
    """near_cache_invalidation = "push" silently acts as "check" when the ACL refuses the
    tracking session's commands: config check opens one and says which step was refused."""
    body = _PUSH_CONFIG + 'key_prefix = "vault:"\n'
    refused = _config(
        tmp_path, body + f'url = "redis://nopush:{PASSWORD}@127.0.0.1:{acl_redis.port}/0"\n'
    )
    check = _invoke("-c", str(refused), "config", "check")
    assert check.exit_code == 6, check.output
    assert (
        "FAIL redis push" in check.stdout
        and "refused CLIENT TRACKING (NoPermissionError)" in check.stdout
    )
    assert PASSWORD not in check.output
    allowed = _config(
        tmp_path, body + f'url = "redis://127.0.0.1:{acl_redis.port}/0"\n', name="ok.toml"
    )
    ok = _invoke("--json", "-c", str(allowed), "config", "check")
    assert ok.exit_code == 0, ok.output
    checks = {c["check"]: c for c in json.loads(ok.stdout)["checks"]}
    assert checks["redis push"]["ok"] is True
    # check mode does not try tracking at all
    plain = _config(
        tmp_path,
        body.replace('"push"', '"check"') + f'url = "redis://127.0.0.1:{acl_redis.port}/0"\n',
        name="check.toml",
    )
    assert "redis push" not in _invoke("-c", str(plain), "config", "check").stdout
    # the handshake passes, the session marker's SET (the cache's last step) is refused:
    # the cache's session never opens, so the check fails too
    no_marker = _config(
        tmp_path,
        body + f'url = "redis://nomark:{PASSWORD}@127.0.0.1:{acl_redis.port}/0"\n',
        name="nomark.toml",
    )
    check = _invoke("-c", str(no_marker), "config", "check")
    assert check.exit_code == 6, check.output
    assert "FAIL redis push" in check.stdout and "refused SET (the session marker)" in check.stdout
    assert PASSWORD not in check.output


class _SilentOnClientId(socketserver.BaseRequestHandler):
    """A server answering like Redis (PONG, OK) until a CLIENT ID, which it never answers."""

    def handle(self) -> None:
        while data := self.request.recv(65536):
            if b"CLIENT\r\n$2\r\nID" in data:
                while self.request.recv(65536):  # silent until the client hangs up
                    pass
                return
            commands = sum(1 for line in data.split(b"\r\n") if line.startswith(b"*"))
            self.request.sendall(b"+PONG\r\n" if b"PING" in data else b"+OK\r\n" * commands)


def test_config_check_says_which_tracking_step_got_no_answer(
    tmp_path: Path, fakeprod: InMemoryProfileStore, acl_redis: Any
) -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SilentOnClientId)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body = _PUSH_CONFIG
        silent = _config(
            tmp_path, body + f'url = "redis://127.0.0.1:{server.server_address[1]}/0"\n'
        )
        check = _invoke("-c", str(silent), "config", "check")
        assert check.exit_code == 7, check.output  # unavailable, not a configuration error
        assert "FAIL redis push" in check.stdout and "CLIENT ID got no answer" in check.stdout
    finally:
        server.shutdown()
        server.server_close()
    # no near tier: push mode has nothing to do, even where the ACL refuses tracking
    url = f"redis://nopush:{PASSWORD}@127.0.0.1:{acl_redis.port}/0"
    off = _config(tmp_path, body + f'url = "{url}"\nnear_cache_size = 0\n', name="off.toml")
    ok = _invoke("-c", str(off), "config", "check")
    assert ok.exit_code == 0, ok.output
    assert "ok   redis push: near_cache_size = 0" in ok.stdout
